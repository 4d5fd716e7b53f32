//! Parsing inbound emails and matching them against rules.
