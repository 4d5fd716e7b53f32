//! Webhook signature schemes: HMAC-SHA256, GitHub, Stripe, Standard Webhooks.
//!
//! [`verify`] checks that a webhook was signed with the configured secret (or,
//! during a rotation, the previous one). Every scheme is an HMAC-SHA256 over
//! some signed content; the schemes differ only in where the signature and
//! timestamp travel and how the content is assembled:
//!
//! | scheme              | signature header                | signed content            |
//! |---------------------|---------------------------------|---------------------------|
//! | `hmac-sha256`       | `cfg.header`, optional prefix   | `body`                    |
//! | `github`            | `X-Hub-Signature-256: sha256=…` | `body`                    |
//! | `stripe`            | `Stripe-Signature: t=…,v1=…`    | `{t}.{body}`              |
//! | `standard-webhooks` | `webhook-signature: v1,…`       | `{id}.{timestamp}.{body}` |
//!
//! Signatures are compared in constant time, and every candidate signature is
//! compared with every key before deciding. Signed timestamps must lie within
//! `cfg.tolerance_secs` of `now`, in the past or in the future. The module is
//! pure: the caller passes `now`.
//!
//! [`sign`] produces the headers a vendor would send; it exists for tests and
//! the demo vendor.

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use crate::config::{Secret, SignatureEncoding, SignatureScheme, WebhookConfig};

const GITHUB_HEADER: &str = "X-Hub-Signature-256";
const GITHUB_PREFIX: &str = "sha256=";
const STRIPE_HEADER: &str = "Stripe-Signature";
const SW_ID: &str = "webhook-id";
const SW_TIMESTAMP: &str = "webhook-timestamp";
const SW_SIGNATURE: &str = "webhook-signature";
const SW_SECRET_PREFIX: &str = "whsec_";

/// Why a webhook was rejected. Messages never show a secret or a signature.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// A header the scheme needs is absent; holds the header name.
    #[error("missing header {0}")]
    MissingHeader(String),
    #[error("malformed header {header}: {reason}")]
    Malformed { header: String, reason: String },
    #[error("signature does not match the body under any configured secret")]
    Mismatch,
    /// The signed timestamp is too old (positive age) or too far in the future
    /// (negative age).
    #[error(
        "signed timestamp is {}, outside the tolerance of {tolerance_secs}s",
        describe_age(*age_secs)
    )]
    Expired { age_secs: i64, tolerance_secs: u64 },
    #[error("no usable secret configured")]
    NoSecret,
}

type HmacSha256 = Hmac<Sha256>;

fn describe_age(age_secs: i64) -> String {
    if age_secs < 0 {
        format!("{}s in the future", age_secs.unsigned_abs())
    } else {
        format!("{age_secs}s old")
    }
}

/// Checks the signature of a webhook with `body` and `headers` against `cfg`.
///
/// The signature is checked before the timestamp, so `Expired` means an
/// authentic but stale (or replayed) delivery.
pub fn verify(
    cfg: &WebhookConfig,
    headers: &HeaderMap,
    body: &[u8],
    now_unix_secs: i64,
) -> Result<(), SignatureError> {
    if cfg.scheme == SignatureScheme::None {
        return Ok(());
    }
    let keys = keys(cfg)?;
    let signed = read_headers(cfg, headers)?;
    let raw_ts = signed.timestamp.map(|(raw, _)| raw);
    let content = signed_content(cfg.scheme, signed.id, raw_ts, body);
    matches_any(&keys, &content, &signed.signatures)?;
    if let Some((_, ts)) = signed.timestamp {
        check_age(ts, now_unix_secs, cfg.tolerance_secs)?;
    }
    Ok(())
}

/// The headers a vendor sends for `body` at `now_unix_secs`, signed with
/// `cfg.secret`; for tests and the demo vendor. `id` is the message id of
/// `standard-webhooks` and unused by the other schemes.
///
/// Returns no headers for scheme `none`, or when there is no usable secret
/// (or, for `hmac-sha256`, no configured header).
pub fn sign(
    cfg: &WebhookConfig,
    body: &[u8],
    now_unix_secs: i64,
    id: &str,
) -> Vec<(String, String)> {
    let Some(key) = cfg.secret.as_ref().and_then(|s| key_bytes(cfg.scheme, s)) else {
        return Vec::new();
    };
    let ts = now_unix_secs.to_string();
    let mac = || hmac(&key, &signed_content(cfg.scheme, Some(id), Some(&ts), body));
    match cfg.scheme {
        SignatureScheme::None => Vec::new(),
        SignatureScheme::HmacSha256 => {
            let Some(header) = &cfg.header else {
                return Vec::new();
            };
            let sig = match cfg.encoding {
                SignatureEncoding::Hex => hex::encode(mac()),
                SignatureEncoding::Base64 => BASE64.encode(mac()),
            };
            let prefix = cfg.prefix.as_deref().unwrap_or("");
            vec![(header.clone(), format!("{prefix}{sig}"))]
        }
        SignatureScheme::Github => vec![(
            GITHUB_HEADER.into(),
            format!("{GITHUB_PREFIX}{}", hex::encode(mac())),
        )],
        SignatureScheme::Stripe => vec![(
            STRIPE_HEADER.into(),
            format!("t={ts},v1={}", hex::encode(mac())),
        )],
        SignatureScheme::StandardWebhooks => vec![
            (SW_ID.into(), id.into()),
            (SW_TIMESTAMP.into(), ts.clone()),
            (SW_SIGNATURE.into(), format!("v1,{}", BASE64.encode(mac()))),
        ],
    }
}

/// The HMAC keys to try, in order: the current secret, then the previous one.
fn keys(cfg: &WebhookConfig) -> Result<Vec<Vec<u8>>, SignatureError> {
    let keys: Vec<Vec<u8>> = [&cfg.secret, &cfg.previous_secret]
        .into_iter()
        .flatten()
        .filter_map(|s| key_bytes(cfg.scheme, s))
        .collect();
    if keys.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    Ok(keys)
}

/// The HMAC key of a secret: its bytes, except for `standard-webhooks`, whose
/// secret is base64 (optionally prefixed `whsec_`). `None` when undecodable or
/// empty: an empty key would make anyone able to sign.
fn key_bytes(scheme: SignatureScheme, secret: &Secret) -> Option<Vec<u8>> {
    let s = secret.expose();
    match scheme {
        SignatureScheme::StandardWebhooks => BASE64
            .decode(s.strip_prefix(SW_SECRET_PREFIX).unwrap_or(s))
            .ok(),
        _ => Some(s.as_bytes().to_vec()),
    }
    .filter(|k| !k.is_empty())
}

/// The pieces of content a scheme signs, in order.
fn signed_content<'a>(
    scheme: SignatureScheme,
    id: Option<&'a str>,
    timestamp: Option<&'a str>,
    body: &'a [u8],
) -> Vec<&'a [u8]> {
    let (id, ts) = (id.unwrap_or(""), timestamp.unwrap_or(""));
    match scheme {
        SignatureScheme::Stripe => vec![ts.as_bytes(), b".", body],
        SignatureScheme::StandardWebhooks => {
            vec![id.as_bytes(), b".", ts.as_bytes(), b".", body]
        }
        _ => vec![body],
    }
}

/// HMAC-SHA256 of the concatenated `content` under `key`.
fn hmac(key: &[u8], content: &[&[u8]]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for piece in content {
        mac.update(piece);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Passes when any candidate signature equals the HMAC of `content` under any
/// key. Every pair is compared in constant time, without stopping early.
fn matches_any(
    keys: &[Vec<u8>],
    content: &[&[u8]],
    candidates: &[Vec<u8>],
) -> Result<(), SignatureError> {
    let mut ok = Choice::from(0);
    for key in keys {
        let expected = hmac(key, content);
        for candidate in candidates {
            ok |= expected.as_slice().ct_eq(candidate.as_slice());
        }
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn check_age(ts: i64, now: i64, tolerance_secs: u64) -> Result<(), SignatureError> {
    let age_secs = now.saturating_sub(ts);
    if age_secs.unsigned_abs() > tolerance_secs {
        return Err(SignatureError::Expired {
            age_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

/// What the headers of a delivery carry.
struct Signed<'a> {
    /// Decoded candidate signatures; the delivery passes if any matches.
    signatures: Vec<Vec<u8>>,
    /// `standard-webhooks`: the message id.
    id: Option<&'a str>,
    /// The signed timestamp as sent and as a number, for schemes that have one.
    timestamp: Option<(&'a str, i64)>,
}

fn read_headers<'a>(
    cfg: &'a WebhookConfig,
    headers: &'a HeaderMap,
) -> Result<Signed<'a>, SignatureError> {
    let mut signed = Signed {
        signatures: Vec::new(),
        id: None,
        timestamp: None,
    };
    match cfg.scheme {
        SignatureScheme::None => {}
        SignatureScheme::HmacSha256 => {
            let Some(name) = cfg.header.as_deref() else {
                return Err(malformed(
                    "webhook.header",
                    "scheme hmac-sha256 needs a configured signature header",
                ));
            };
            let value = header(headers, name)?;
            let sig = strip_prefix(name, value, cfg.prefix.as_deref().unwrap_or(""))?;
            signed.signatures.push(decode(name, sig, cfg.encoding)?);
        }
        SignatureScheme::Github => {
            let value = header(headers, GITHUB_HEADER)?;
            let sig = strip_prefix(GITHUB_HEADER, value, GITHUB_PREFIX)?;
            signed
                .signatures
                .push(decode(GITHUB_HEADER, sig, SignatureEncoding::Hex)?);
        }
        SignatureScheme::Stripe => {
            let value = header(headers, STRIPE_HEADER)?;
            for item in value.split(',').map(str::trim) {
                let Some((k, v)) = item.split_once('=') else {
                    return Err(malformed(
                        STRIPE_HEADER,
                        "an item is not of the form key=value",
                    ));
                };
                match k {
                    "t" if signed.timestamp.is_none() => {
                        signed.timestamp = Some((v, parse_timestamp(STRIPE_HEADER, v)?));
                    }
                    "t" => return Err(malformed(STRIPE_HEADER, "more than one timestamp t=")),
                    "v1" => {
                        signed
                            .signatures
                            .push(decode(STRIPE_HEADER, v, SignatureEncoding::Hex)?)
                    }
                    _ => {} // v0 and future schemes
                }
            }
            if signed.timestamp.is_none() {
                return Err(malformed(STRIPE_HEADER, "no timestamp t="));
            }
            if signed.signatures.is_empty() {
                return Err(malformed(STRIPE_HEADER, "no v1= signature"));
            }
        }
        SignatureScheme::StandardWebhooks => {
            signed.id = Some(header(headers, SW_ID)?);
            let ts = header(headers, SW_TIMESTAMP)?;
            signed.timestamp = Some((ts, parse_timestamp(SW_TIMESTAMP, ts)?));
            let value = header(headers, SW_SIGNATURE)?;
            for item in value.split_ascii_whitespace() {
                let Some((version, sig)) = item.split_once(',') else {
                    return Err(malformed(
                        SW_SIGNATURE,
                        "an entry is not of the form version,signature",
                    ));
                };
                if version == "v1" {
                    signed
                        .signatures
                        .push(decode(SW_SIGNATURE, sig, SignatureEncoding::Base64)?);
                }
            }
            if signed.signatures.is_empty() {
                return Err(malformed(SW_SIGNATURE, "no v1 signature"));
            }
        }
    }
    Ok(signed)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, SignatureError> {
    let value = headers
        .get(name)
        .ok_or_else(|| SignatureError::MissingHeader(name.to_string()))?;
    value
        .to_str()
        .map(str::trim)
        .map_err(|_| malformed(name, "not visible ASCII"))
}

/// Strips `prefix` (compared ignoring ASCII case) from a header value.
fn strip_prefix<'a>(header: &str, value: &'a str, prefix: &str) -> Result<&'a str, SignatureError> {
    match value.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => Ok(&value[prefix.len()..]),
        _ => Err(malformed(header, format!("does not start with {prefix:?}"))),
    }
}

fn decode(header: &str, sig: &str, encoding: SignatureEncoding) -> Result<Vec<u8>, SignatureError> {
    let decoded = match encoding {
        SignatureEncoding::Hex => hex::decode(sig).map_err(|_| "signature is not hex"),
        SignatureEncoding::Base64 => BASE64.decode(sig).map_err(|_| "signature is not base64"),
    };
    match decoded {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        Ok(_) => Err(malformed(header, "empty signature")),
        Err(reason) => Err(malformed(header, reason)),
    }
}

fn parse_timestamp(header: &str, ts: &str) -> Result<i64, SignatureError> {
    ts.parse().map_err(|_| {
        let shown: String = ts.chars().take(24).collect();
        let more = if shown.len() < ts.len() { "…" } else { "" };
        malformed(
            header,
            format!("timestamp \"{shown}{more}\" is not an integer"),
        )
    })
}

fn malformed(header: &str, reason: impl Into<String>) -> SignatureError {
    SignatureError::Malformed {
        header: header.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"ord_1","status":"shipped"}"#;
    // Standard Webhooks secrets are base64; the others are used as bytes.
    const CURRENT: &str = "whsec_Y3VycmVudC1zZWNyZXQtMzItYnl0ZXMtbG9uZyEh";
    const PREVIOUS: &str = "whsec_cHJldmlvdXMtc2VjcmV0LTMyLWJ5dGVzLWxvbmch";
    const OTHER: &str = "whsec_b3RoZXItc2VjcmV0LW5vYm9keS1jb25maWd1cmVk";

    /// A webhook config from the TOML-like JSON form, for brevity.
    fn cfg(scheme: serde_json::Value) -> WebhookConfig {
        serde_json::from_value(scheme).unwrap()
    }

    fn with_secrets(
        base: &WebhookConfig,
        secret: Option<&str>,
        previous: Option<&str>,
    ) -> WebhookConfig {
        WebhookConfig {
            secret: secret.map(Secret::new),
            previous_secret: previous.map(Secret::new),
            ..base.clone()
        }
    }

    fn header_map(pairs: &[(String, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// One config per signing scheme, each signed with `CURRENT`.
    fn schemes() -> Vec<(&'static str, WebhookConfig)> {
        vec![
            (
                "hmac-sha256 hex",
                cfg(json!({"scheme": "hmac-sha256", "header": "X-Signature", "secret": CURRENT})),
            ),
            (
                "hmac-sha256 base64 with prefix",
                cfg(
                    json!({"scheme": "hmac-sha256", "header": "X-Shop-Hmac", "encoding": "base64",
                           "prefix": "sha256=", "secret": CURRENT}),
                ),
            ),
            (
                "github",
                cfg(json!({"scheme": "github", "secret": CURRENT})),
            ),
            (
                "stripe",
                cfg(json!({"scheme": "stripe", "secret": CURRENT})),
            ),
            (
                "standard-webhooks",
                cfg(json!({"scheme": "standard-webhooks", "secret": CURRENT})),
            ),
        ]
    }

    fn signed(cfg: &WebhookConfig, body: &[u8], at: i64) -> HeaderMap {
        let headers = sign(cfg, body, at, "msg_1");
        assert!(!headers.is_empty(), "{:?} signs", cfg.scheme);
        header_map(&headers)
    }

    #[test]
    fn github_published_example() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let c = cfg(json!({"scheme": "github", "secret": "It's a Secret to Everybody"}));
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            sign(&c, b"Hello, World!", 0, ""),
            vec![("X-Hub-Signature-256".to_string(), expected.to_string())]
        );
        let headers = header_map(&[("x-hub-signature-256".into(), expected.into())]);
        assert_eq!(verify(&c, &headers, b"Hello, World!", 0), Ok(()));
        assert_eq!(
            verify(&c, &headers, b"Hello, World?", 0),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn standard_webhooks_published_example() {
        // https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let (id, ts, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let c = cfg(json!({"scheme": "standard-webhooks", "secret": secret}));
        let headers = sign(&c, body, ts, id);
        assert_eq!(
            headers,
            vec![
                ("webhook-id".to_string(), id.to_string()),
                ("webhook-timestamp".to_string(), ts.to_string()),
                ("webhook-signature".to_string(), expected.to_string()),
            ]
        );
        let headers = header_map(&headers);
        assert_eq!(verify(&c, &headers, body, ts), Ok(()));
        // The same key given bare, without the whsec_ prefix.
        let bare = with_secrets(&c, Some("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None);
        assert_eq!(verify(&bare, &headers, body, ts), Ok(()));
    }

    #[test]
    fn every_scheme_accepts_valid_and_rejects_forged_deliveries() {
        for (name, c) in schemes() {
            let good = signed(&c, BODY, NOW);
            assert_eq!(verify(&c, &good, BODY, NOW), Ok(()), "{name}: valid");
            assert_eq!(
                verify(&c, &good, BODY, NOW + 10),
                Ok(()),
                "{name}: a bit later"
            );

            let forged = signed(&with_secrets(&c, Some(OTHER), None), BODY, NOW);
            assert_eq!(
                verify(&c, &forged, BODY, NOW),
                Err(SignatureError::Mismatch),
                "{name}: wrong secret"
            );
            assert_eq!(
                verify(&c, &good, br#"{"id":"ord_1","status":"refunded"}"#, NOW),
                Err(SignatureError::Mismatch),
                "{name}: altered body"
            );
            assert_eq!(
                verify(&c, &good, b"", NOW),
                Err(SignatureError::Mismatch),
                "{name}: empty body"
            );
        }
    }

    #[test]
    fn every_scheme_accepts_the_previous_secret_during_rotation() {
        for (name, c) in schemes() {
            let rotating = with_secrets(&c, Some(CURRENT), Some(PREVIOUS));
            let cases = [
                (CURRENT, Ok(())),
                (PREVIOUS, Ok(())),
                (OTHER, Err(SignatureError::Mismatch)),
            ];
            for (signer, expected) in cases {
                let headers = signed(&with_secrets(&c, Some(signer), None), BODY, NOW);
                assert_eq!(
                    verify(&rotating, &headers, BODY, NOW),
                    expected,
                    "{name}: signed with {signer}"
                );
            }
            // Without the previous secret, its signatures no longer pass.
            let headers = signed(&with_secrets(&c, Some(PREVIOUS), None), BODY, NOW);
            assert_eq!(
                verify(&c, &headers, BODY, NOW),
                Err(SignatureError::Mismatch),
                "{name}: rotation over"
            );
        }
    }

    #[test]
    fn every_header_is_required() {
        for (name, c) in schemes() {
            let sent = sign(&c, BODY, NOW, "msg_1");
            for (missing, _) in &sent {
                let rest: Vec<_> = sent.iter().filter(|(k, _)| k != missing).cloned().collect();
                assert_eq!(
                    verify(&c, &header_map(&rest), BODY, NOW),
                    Err(SignatureError::MissingHeader(missing.clone())),
                    "{name}: without {missing}"
                );
            }
        }
    }

    #[test]
    fn garbage_headers_are_malformed() {
        let garbage = [
            "garbage",
            "sha256=zz",
            "t=abc,v1=00",
            "v1=00",
            "t=1",
            "t=1,t=2,v1=00",
            "t=1,nonsense",
            "v1,***",
            "v2,abc=",
            "",
        ];
        for (name, c) in schemes() {
            let good = sign(&c, BODY, NOW, "msg_1");
            let (sig_header, _) = good.last().unwrap().clone();
            for value in garbage {
                let mut headers = good.clone();
                headers.last_mut().unwrap().1 = value.to_string();
                let err = verify(&c, &header_map(&headers), BODY, NOW).unwrap_err();
                assert!(
                    matches!(&err, SignatureError::Malformed { header, .. } if *header == sig_header),
                    "{name}: {value:?} gave {err:?}"
                );
            }
        }
    }

    #[test]
    fn malformed_timestamps() {
        let c = cfg(json!({"scheme": "standard-webhooks", "secret": CURRENT}));
        let mut headers = signed(&c, BODY, NOW);
        headers.insert("webhook-timestamp", HeaderValue::from_static("soon"));
        assert_eq!(
            verify(&c, &headers, BODY, NOW),
            Err(SignatureError::Malformed {
                header: "webhook-timestamp".into(),
                reason: "timestamp \"soon\" is not an integer".into()
            })
        );
        let long = "9".repeat(40);
        headers.insert("webhook-timestamp", HeaderValue::from_str(&long).unwrap());
        let err = verify(&c, &headers, BODY, NOW).unwrap_err().to_string();
        assert!(err.contains("…") && !err.contains(&long), "{err}");
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_expired() {
        for (name, c) in schemes() {
            if !matches!(
                c.scheme,
                SignatureScheme::Stripe | SignatureScheme::StandardWebhooks
            ) {
                continue;
            }
            let tol = i64::try_from(c.tolerance_secs).unwrap();
            assert_eq!(tol, 300, "default tolerance");
            let cases = [
                (NOW - tol, Ok(())),
                (NOW + tol, Ok(())),
                (
                    NOW - tol - 1,
                    Err(SignatureError::Expired {
                        age_secs: tol + 1,
                        tolerance_secs: 300,
                    }),
                ),
                (
                    NOW + tol + 1,
                    Err(SignatureError::Expired {
                        age_secs: -tol - 1,
                        tolerance_secs: 300,
                    }),
                ),
                (
                    0,
                    Err(SignatureError::Expired {
                        age_secs: NOW,
                        tolerance_secs: 300,
                    }),
                ),
            ];
            for (signed_at, expected) in cases {
                let headers = signed(&c, BODY, signed_at);
                assert_eq!(
                    verify(&c, &headers, BODY, NOW),
                    expected,
                    "{name}: signed at {signed_at}"
                );
            }
            // A stale timestamp does not rescue a forged signature.
            let forged = signed(&with_secrets(&c, Some(OTHER), None), BODY, 0);
            assert_eq!(
                verify(&c, &forged, BODY, NOW),
                Err(SignatureError::Mismatch),
                "{name}"
            );
        }
    }

    #[test]
    fn stripe_accepts_any_v1_and_ignores_v0() {
        let c = cfg(json!({"scheme": "stripe", "secret": CURRENT}));
        let good = sign(&c, BODY, NOW, "");
        let v1 = good[0].1.split_once(",v1=").unwrap().1.to_string();
        let other = "0".repeat(64);
        let cases = [
            (format!("t={NOW},v1={other},v1={v1}"), Ok(())),
            (format!("t={NOW}, v0={other}, v1={v1}"), Ok(())),
            (format!("v1={v1},t={NOW},scheme=x"), Ok(())),
            (
                format!("t={NOW},v0={v1}"),
                Err(malformed(STRIPE_HEADER, "no v1= signature")),
            ),
            (format!("t={NOW},v1={other}"), Err(SignatureError::Mismatch)),
            (
                format!("t={},v1={v1}", NOW + 1),
                Err(SignatureError::Mismatch),
            ),
        ];
        for (value, expected) in cases {
            let headers = header_map(&[("stripe-signature".into(), value.clone())]);
            assert_eq!(verify(&c, &headers, BODY, NOW), expected, "{value}");
        }
    }

    #[test]
    fn standard_webhooks_accepts_any_v1_and_ignores_other_versions() {
        let c = cfg(json!({"scheme": "standard-webhooks", "secret": CURRENT}));
        let good = sign(&c, BODY, NOW, "msg_1");
        let sig = good[2].1.clone();
        let other = format!("v1,{}", BASE64.encode([0u8; 32]));
        let cases = [
            (format!("{other} {sig}"), Ok(())),
            (format!("v1a,AAAA {sig}  v2,xyz"), Ok(())),
            (
                "v1a,AAAA".to_string(),
                Err(malformed(SW_SIGNATURE, "no v1 signature")),
            ),
            (other, Err(SignatureError::Mismatch)),
        ];
        for (value, expected) in cases {
            let mut headers = good.clone();
            headers[2].1 = value.clone();
            assert_eq!(
                verify(&c, &header_map(&headers), BODY, NOW),
                expected,
                "{value}"
            );
        }
        // The id is signed too.
        let mut headers = good.clone();
        headers[0].1 = "msg_2".into();
        assert_eq!(
            verify(&c, &header_map(&headers), BODY, NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn hmac_sha256_prefix_and_encoding() {
        let c = cfg(
            json!({"scheme": "hmac-sha256", "header": "X-Sig", "prefix": "sha256=", "secret": "k"}),
        );
        let sig = hex::encode(hmac(b"k", &[BODY]));
        let cases = [
            (format!("sha256={sig}"), Ok(())),
            (format!("SHA256={}", sig.to_uppercase()), Ok(())),
            (format!("  sha256={sig} "), Ok(())),
            (
                sig.clone(),
                Err(malformed("X-Sig", "does not start with \"sha256=\"")),
            ),
            (
                format!("sha256={}", BASE64.encode(hmac(b"k", &[BODY]))),
                Err(malformed("X-Sig", "signature is not hex")),
            ),
            (
                "sha256=".to_string(),
                Err(malformed("X-Sig", "empty signature")),
            ),
            (
                format!("sha256={}", &sig[..32]),
                Err(SignatureError::Mismatch),
            ),
        ];
        for (value, expected) in cases {
            let headers = header_map(&[("x-sig".into(), value.clone())]);
            assert_eq!(verify(&c, &headers, BODY, NOW), expected, "{value}");
        }
        let unconfigured = WebhookConfig { header: None, ..c };
        assert!(matches!(
            verify(&unconfigured, &HeaderMap::new(), BODY, NOW),
            Err(SignatureError::Malformed { .. })
        ));
        assert!(sign(&unconfigured, BODY, NOW, "").is_empty());
    }

    #[test]
    fn secrets_and_the_none_scheme() {
        let none = cfg(json!({"scheme": "none"}));
        assert_eq!(verify(&none, &HeaderMap::new(), BODY, NOW), Ok(()));
        assert!(sign(&none, BODY, NOW, "").is_empty());
        for (name, c) in schemes() {
            let headers = signed(&c, BODY, NOW);
            let unset = with_secrets(&c, None, None);
            assert_eq!(
                verify(&unset, &headers, BODY, NOW),
                Err(SignatureError::NoSecret),
                "{name}"
            );
            assert_eq!(
                verify(&unset, &HeaderMap::new(), BODY, NOW),
                Err(SignatureError::NoSecret),
                "{name}"
            );
            assert!(sign(&unset, BODY, NOW, "").is_empty(), "{name}");
        }
        // Standard Webhooks: an undecodable current secret leaves the previous one.
        let c = cfg(
            json!({"scheme": "standard-webhooks", "secret": "whsec_***", "previous_secret": CURRENT}),
        );
        let headers = signed(&with_secrets(&c, Some(CURRENT), None), BODY, NOW);
        assert_eq!(verify(&c, &headers, BODY, NOW), Ok(()));
        let c = with_secrets(&c, Some("whsec_***"), None);
        assert_eq!(
            verify(&c, &headers, BODY, NOW),
            Err(SignatureError::NoSecret)
        );
    }

    #[test]
    fn messages_name_the_header_but_not_the_signature() {
        let c = cfg(json!({"scheme": "github", "secret": CURRENT}));
        let good = sign(&c, BODY, NOW, "");
        let sig = good[0].1.strip_prefix("sha256=").unwrap();
        let bad = format!("sha1={sig}");
        let err = verify(
            &c,
            &header_map(&[("x-hub-signature-256".into(), bad)]),
            BODY,
            NOW,
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            "malformed header X-Hub-Signature-256: does not start with \"sha256=\""
        );
        let errors = [
            SignatureError::MissingHeader("webhook-id".into()),
            SignatureError::Mismatch,
            SignatureError::Expired {
                age_secs: 301,
                tolerance_secs: 300,
            },
            SignatureError::Expired {
                age_secs: -301,
                tolerance_secs: 300,
            },
            SignatureError::NoSecret,
        ];
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "missing header webhook-id",
                "signature does not match the body under any configured secret",
                "signed timestamp is 301s old, outside the tolerance of 300s",
                "signed timestamp is 301s in the future, outside the tolerance of 300s",
                "no usable secret configured",
            ]
        );
        for t in texts.iter().chain([&text]) {
            assert!(!t.contains(sig) && !t.contains(&CURRENT[6..]), "{t}");
        }
    }

    proptest! {
        #[test]
        fn verify_never_panics(
            scheme in 0usize..6,
            body in prop::collection::vec(any::<u8>(), 0..256),
            values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 4),
            now in any::<i64>(),
        ) {
            let mut all = schemes();
            all.push(("none", cfg(json!({"scheme": "none"}))));
            let c = &all[scheme].1;
            let names = [c.header.as_deref().unwrap_or("x-signature"), GITHUB_HEADER, STRIPE_HEADER, SW_SIGNATURE];
            let mut headers = HeaderMap::new();
            for (name, value) in names.iter().zip(&values) {
                if let Ok(v) = HeaderValue::from_bytes(value) {
                    headers.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), v);
                }
            }
            headers.insert(SW_ID, HeaderValue::from_static("msg_1"));
            if let Ok(v) = HeaderValue::from_bytes(&values[0]) {
                headers.insert(SW_TIMESTAMP, v);
            }
            let _ = verify(c, &headers, &body, now);
        }

        #[test]
        fn signed_random_bodies_verify(body in prop::collection::vec(any::<u8>(), 0..256), scheme in 0usize..5) {
            let c = &schemes()[scheme].1;
            let headers = signed(c, &body, NOW);
            prop_assert_eq!(verify(c, &headers, &body, NOW), Ok(()));
        }
    }
}
