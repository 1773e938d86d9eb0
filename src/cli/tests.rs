use clap::CommandFactory;

use super::{Cli, parse_listen};

#[test]
fn the_archive_help_says_its_nats_options_read_what_the_stream_publishes() {
    let mut cli = Cli::command();
    let mut help = |command: &str| {
        cli.find_subcommand_mut(command)
            .unwrap()
            .render_long_help()
            .to_string()
    };
    let archive = help("archive");
    assert!(
        archive.contains("Read the rows `stream --nats` published from NATS JetStream"),
        "{archive}"
    );
    assert!(
        archive.contains("The JetStream stream to read from"),
        "{archive}"
    );
    assert!(!archive.contains("Publish every row"), "{archive}");
    let stream = help("stream");
    assert!(
        stream.contains("Publish every row to NATS JetStream"),
        "{stream}"
    );
    assert!(!stream.contains("Read the rows"), "{stream}");
}

#[test]
fn the_verify_help_says_its_nats_options_read_the_digests() {
    let mut cli = Cli::command();
    let verify = cli
        .find_subcommand_mut("verify")
        .unwrap()
        .render_long_help()
        .to_string();
    assert!(
        verify.contains("read the digests `stream --signing-key --nats` published"),
        "{verify}"
    );
    assert!(verify.contains("<NAME>_DIGESTS"), "{verify}");
    assert!(!verify.contains("Publish every row"), "{verify}");
    assert!(!verify.contains("--nats-max-age"), "{verify}");
    assert!(!verify.contains("created with file storage"), "{verify}");
}

#[test]
fn a_relative_time_may_start_with_a_minus_as_in_journalctl() {
    use clap::Parser;
    for args in [
        &["audit-tail", "history", "t", "1", "--at", "-2h"][..],
        &["audit-tail", "log", "--since", "-2h", "--until", "-30min"][..],
    ] {
        let cli = Cli::try_parse_from(args);
        assert!(cli.is_ok(), "{args:?}: {:?}", cli.err());
    }
}

#[test]
fn metrics_addresses_are_taken_as_exporters_take_them() {
    assert_eq!(
        parse_listen("127.0.0.1:9187").unwrap().to_string(),
        "127.0.0.1:9187"
    );
    assert_eq!(parse_listen(":9187").unwrap().to_string(), "0.0.0.0:9187");
    assert_eq!(parse_listen("[::1]:0").unwrap().to_string(), "[::1]:0");
    assert_eq!(parse_listen("localhost:9187").unwrap().port(), 9187);
    for bad in ["9187", "127.0.0.1", ":http", "127.0.0.1:99999"] {
        let e = parse_listen(bad).unwrap_err();
        assert!(e.contains("is not an address to listen on"), "{bad}: {e}");
    }
}

#[test]
fn nats_max_age_takes_days_hours_minutes_seconds_or_zero() {
    use std::time::Duration;
    assert_eq!(
        super::parse_age("30d"),
        Ok(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(super::parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
    assert_eq!(super::parse_age("0"), Ok(Duration::ZERO));
    assert!(super::parse_age("30").unwrap_err().contains("30d, 12h"));
    assert!(super::parse_age("d").is_err());
}

#[test]
fn every_option_of_every_command_says_what_it_is_for() {
    let cli = Cli::command();
    for command in cli.get_subcommands() {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            assert!(
                arg.get_help().is_some_and(|h| !h.to_string().is_empty()),
                "audit-tail {} --{id} has no help text",
                command.get_name()
            );
        }
    }
}
