//! Unit tests of the command line: the log filter, and help text for every argument of every command.

use super::*;

#[test]
fn the_log_filter_leaves_out_postgres_notices_unless_asked() {
    assert_eq!(
        log_directives(None, "info"),
        "info,sqlx::postgres::notice=warn"
    );
    assert_eq!(
        log_directives(Some("debug"), "info"),
        "debug,sqlx::postgres::notice=warn"
    );
    assert_eq!(
        log_directives(Some("  "), "warn"),
        "warn,sqlx::postgres::notice=warn"
    );
    assert_eq!(
        log_directives(Some("info,sqlx::postgres::notice=debug"), "info"),
        "info,sqlx::postgres::notice=debug"
    );
    // The result is a filter tracing accepts.
    for d in [
        log_directives(None, "info"),
        log_directives(Some("debug"), "info"),
    ] {
        tracing_subscriber::EnvFilter::try_new(&d).unwrap();
    }
}
