//! The one HTTP client driftd uses for producers and applications: same-origin redirects only, a user agent, a connect timeout.

/// The HTTP client for producers and applications.
///
/// Redirects are followed only within the same origin (at most 5): request
/// headers carry producers' secrets, which must not reach another host.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    let same_origin = reqwest::redirect::Policy::custom(|attempt| {
        let from = attempt.previous().last().map(|u| u.origin());
        if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else if from.as_ref() == Some(&attempt.url().origin()) {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    Ok(reqwest::Client::builder()
        .user_agent(concat!("driftd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .redirect(same_origin)
        .build()?)
}
