//! Usage lines without the options the environment gave. clap counts an option whose value
//! came from its `env` variable as used, and lists it in an error's usage line as if it had been
//! typed (`--nats-user <USER> --nats-password <PASSWORD>` whenever NATS_USER and NATS_PASSWORD
//! are set, which reads as if they were required): they are taken out of the line again.

use super::Cli;

/// `error` with its usage line rid of the options that came from the environment and not from
/// `args` (clap lists them as if typed: `--nats-user <USER> --nats-password <PASSWORD>` in the
/// usage of any error while NATS_USER and NATS_PASSWORD are set, as if they were required).
pub fn without_env_options(
    mut error: clap::Error,
    args: &[std::ffi::OsString],
    is_set: impl Fn(&std::ffi::OsStr) -> bool,
) -> clap::Error {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::StyledStr(usage)) = error.get(ContextKind::Usage) else {
        return error;
    };
    let cli = Cli::command();
    let typed: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let command = typed.iter().skip(1).find_map(|a| cli.find_subcommand(a));
    let arguments = cli
        .get_arguments()
        .chain(command.into_iter().flat_map(|c| c.get_arguments()));
    let mut text = usage.ansi().to_string();
    for arg in arguments {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let flag = format!("--{long}");
        let typed_here = typed
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        if typed_here || !is_set(var) {
            continue;
        }
        let value = arg
            .get_value_names()
            .and_then(|names| names.first())
            .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string());
        text = remove_shown(&text, &format!(" {flag} <{value}>"));
    }
    error.insert(ContextKind::Usage, ContextValue::StyledStr(text.into()));
    error
}

/// `text` without each occurrence of `item` as shown (ANSI styles inside it skipped), when a
/// space, a line's end or the end follows it.
fn remove_shown(text: &str, item: &str) -> String {
    let mut text = text.to_string();
    loop {
        // The characters shown, and for each of their bytes its offset in `text`.
        let (mut shown, mut at) = (String::new(), Vec::new());
        let mut i = 0;
        while let Some(c) = text[i..].chars().next() {
            if c == '\x1b' {
                // ESC [ parameters, ended by a letter.
                let end = text[i + 1..]
                    .find(|c: char| c.is_ascii_alphabetic())
                    .map_or(text.len(), |n| i + 1 + n + 1);
                i = end;
                continue;
            }
            shown.push(c);
            at.extend((0..c.len_utf8()).map(|k| i + k));
            i += c.len_utf8();
        }
        let found = shown.match_indices(item).find(|(start, _)| {
            let rest = &shown[start + item.len()..];
            rest.is_empty() || rest.starts_with([' ', '\n', '\r'])
        });
        let Some((start, _)) = found else {
            return text;
        };
        let last = at[start + item.len() - 1];
        text.replace_range(at[start]..=last, "");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// With NATS_USER and NATS_PASSWORD set, a usage error's usage line does not list
    /// --nats-user and --nats-password as if they were required; typed ones stay.
    #[test]
    fn usage_lines_list_no_option_the_environment_gave() {
        let args =
            |line: &str| -> Vec<std::ffi::OsString> { line.split(' ').map(Into::into).collect() };
        let set = |v: &std::ffi::OsStr| v == "NATS_USER" || v == "NATS_PASSWORD";
        let line = "audit-tail stream --no-files --signing-key k --nats nats://x";
        // What clap makes of NATS_USER and NATS_PASSWORD: the same as if they were typed.
        let typed = format!("{line} --nats-user u --nats-password p");
        let e = Cli::try_parse_from(typed.split(' ')).unwrap_err();
        let before = e.render().to_string();
        assert!(before.contains("--nats-user <USER>"), "{before}");
        let after = super::without_env_options(e, &args(line), set)
            .render()
            .to_string();
        assert!(
            after.contains("Usage: audit-tail stream --no-files --nats <URL>\n"),
            "{after}"
        );
        assert!(!after.contains("--nats-user"), "{after}");
        assert!(!after.contains("--nats-password"), "{after}");
        assert!(
            after.contains("cannot be used with '--signing-key <PATH>'"),
            "{after}"
        );
        // Typed on the command line: it stays.
        let e = Cli::try_parse_from(typed.split(' ')).unwrap_err();
        let kept = super::without_env_options(e, &args(&typed), set)
            .render()
            .to_string();
        assert!(kept.contains("--nats-user <USER>"), "{kept}");
        // Styled (a terminal): the styles around the options go with them.
        let styled = "\x1b[1mUsage:\x1b[0m \x1b[1maudit-tail stream\x1b[0m \x1b[1m--nats\x1b[0m <URL> \
                      \x1b[1m--nats-user\x1b[0m <USER> \x1b[1m--nats-password\x1b[0m <PASSWORD>";
        let out = super::remove_shown(styled, " --nats-user <USER>");
        let out = super::remove_shown(&out, " --nats-password <PASSWORD>");
        assert_eq!(
            out,
            "\x1b[1mUsage:\x1b[0m \x1b[1maudit-tail stream\x1b[0m \x1b[1m--nats\x1b[0m <URL>"
        );
    }
}
