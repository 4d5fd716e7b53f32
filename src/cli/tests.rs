//! Unit tests of the command line: the log filter, and help text for every argument of every command.

use super::*;

#[test]
fn the_log_filter_leaves_out_sqlx_notices_and_statements_unless_asked() {
    let quiet = ",sqlx::postgres::notice=warn,sqlx::query=error";
    assert_eq!(log_directives(None, "info"), format!("info{quiet}"));
    assert_eq!(
        log_directives(Some("debug"), "info"),
        format!("debug{quiet}")
    );
    assert_eq!(log_directives(Some("  "), "warn"), format!("warn{quiet}"));
    assert_eq!(
        log_directives(Some("info,sqlx::postgres::notice=debug"), "info"),
        "info,sqlx::postgres::notice=debug,sqlx::query=error"
    );
    assert_eq!(
        log_directives(Some("info,sqlx::query=warn"), "info"),
        "info,sqlx::query=warn,sqlx::postgres::notice=warn"
    );
    // The result is a filter tracing accepts.
    for d in [
        log_directives(None, "info"),
        log_directives(Some("debug"), "info"),
    ] {
        tracing_subscriber::EnvFilter::try_new(&d).unwrap();
    }
}

/// Every argument of every command, and every command, says what it is in
/// `--help` (clap's own `--help` and `--version` aside).
#[test]
fn every_command_and_argument_has_help() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            *seen += 1;
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            if help.trim().is_empty() {
                missing.push(format!("{path} <{id}>"));
            }
        }
        for sub in cmd.get_subcommands() {
            let name = format!("{path} {}", sub.get_name());
            if sub
                .get_about()
                .is_none_or(|a| a.to_string().trim().is_empty())
            {
                missing.push(name.clone());
            }
            walk(sub, &name, missing, seen);
        }
    }
    let cli = Cli::command();
    cli.clone().debug_assert();
    let (mut missing, mut seen) = (Vec::new(), 0);
    walk(&cli, "driftd", &mut missing, &mut seen);
    assert!(seen > 40, "the walk found the arguments ({seen})");
    assert!(missing.is_empty(), "without help text: {missing:#?}");
}
