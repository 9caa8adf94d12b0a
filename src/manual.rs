//! The manual pages, generated from what the binary itself knows, so they cannot drift
//! from it: condo(8) from clap's description of every command and option, and
//! condo.toml(5) from the key table `condo check` uses (`config::keys`).
//!
//! Hand-written rather than clap_mangen's whole-page render: that renders each
//! subcommand as a link to a `condo-serve(8)`-style page of its own, which nothing
//! ships; here every command is described in the one page.

use crate::config::keys::roff;

/// condo(8): `cli` is the whole command line definition (`Cli::command()`).
pub fn condo_8(cli: &clap::Command) -> String {
    let version = cli.get_version().unwrap_or("");
    let mut out = format!(
        ".TH CONDO 8 \"\" \"condo {}\" \"System Administration\"\n",
        roff(version)
    );
    out.push_str(".SH NAME\n");
    out.push_str(&format!(
        "condo \\- {}\n",
        roff(&cli.get_about().map(|a| a.to_string()).unwrap_or_default())
    ));
    // `-c` belongs to the commands that read the config, after the command's name.
    out.push_str(".SH SYNOPSIS\n\\fBcondo\\fR \\fICOMMAND\\fR [\\fB\\-c\\fR \\fIFILE\\fR] [\\fIOPTIONS\\fR]\n");
    out.push_str(".SH DESCRIPTION\n");
    out.push_str(
        "condo serves many users' sites from one machine. A root master starts an unprivileged dispatcher, which parses clients' bytes and routes each connection by host name, and one worker per tenant, which runs as that tenant's own uid in the tenant's cgroup and reads the tenant's files and runs its code (static files, CGI, FastCGI such as php\\-cgi, app servers). \
The configuration is described in \\fBcondo.toml\\fR(5).\n",
    );
    // `-c` once here, for every command that takes it (and is said of no other).
    let readers: Vec<&str> = cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_arguments().any(|a| a.get_id() == "config"))
        .map(|s| s.get_name())
        .collect();
    out.push_str(".SH OPTIONS\n");
    for arg in cli.get_arguments().filter(|a| !a.is_hide_set()) {
        option(&mut out, arg);
    }
    out.push_str(&format!(
        ".TP\n\\fB\\-c\\fR, \\fB\\-\\-config\\fR \\fIFILE\\fR\nThe admin's config file (default /etc/condo/condo.toml), after the command's name; taken by {}.\n",
        roff(&readers.join(", "))
    ));
    out.push_str(".SH COMMANDS\n");
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        out.push_str(&format!(".SS {}\n", roff(&usage_line(sub))));
        let about = sentence(
            sub.get_long_about()
                .or_else(|| sub.get_about())
                .map(|a| a.to_string())
                .unwrap_or_default(),
        );
        out.push_str(&format!("{}\n", roff(&about)));
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "config")
        {
            option(&mut out, arg);
        }
    }
    out.push_str(SIGNALS_AND_FILES);
    out
}

/// `condo NAME [--flag VALUE] [ARG]`, as the command's usage line.
fn usage_line(sub: &clap::Command) -> String {
    let mut line = format!("condo {}", sub.get_name());
    for arg in sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "config")
    {
        let value = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map(|v| v.to_string())
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
        let takes_value = arg.get_action().takes_values();
        let part = match (arg.get_long(), takes_value) {
            (Some(long), true) => format!("--{long} {value}"),
            (Some(long), false) => format!("--{long}"),
            (None, _) => value,
        };
        if arg.is_required_set() {
            line.push_str(&format!(" {part}"));
        } else {
            line.push_str(&format!(" [{part}]"));
        }
    }
    line
}

fn option(out: &mut String, arg: &clap::Arg) {
    let mut names = Vec::new();
    if let Some(short) = arg.get_short() {
        names.push(format!("\\fB\\-{}\\fR", roff(&short.to_string())));
    }
    if let Some(long) = arg.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", roff(long)));
    }
    let value = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    let named = !names.is_empty();
    if !named {
        names.push(format!("\\fI{}\\fR", roff(&value)));
    }
    let mut head = names.join(", ");
    if named && arg.get_action().takes_values() {
        head.push_str(&format!(" \\fI{}\\fR", roff(&value)));
    }
    let mut text = sentence(
        arg.get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default(),
    );
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty() && v != "false")
        .collect();
    if !defaults.is_empty() {
        text.push_str(&format!(" Default: {}.", defaults.join(", ")));
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| v.get_name().to_string())
        .collect();
    if !possible.is_empty() && arg.get_action().takes_values() {
        text.push_str(&format!(" One of: {}.", possible.join(", ")));
    }
    out.push_str(&format!(".TP\n{head}\n{}\n", roff(text.trim())));
}

/// Help text as a sentence: clap's one-liners have no final stop, and more follows.
fn sentence(text: String) -> String {
    let text = text.trim_end().to_string();
    if text.is_empty() || text.ends_with(['.', '!', '?', ')', ':']) {
        text
    } else {
        format!("{text}.")
    }
}

const SIGNALS_AND_FILES: &str = r".SH SIGNALS
.TP
\fBTERM\fR, \fBINT\fR
Stop: children get TERM, then KILL after 5 s.
.TP
\fBHUP\fR
Reload the configuration; changed tenants' workers are replaced without dropping a connection.
.TP
\fBUSR1\fR
Reopen the error log and every site log (for logrotate).
.SH FILES
.TP
\fI/etc/condo/condo.toml\fR
The admin's configuration; site files are included from it (see \fBcondo.toml\fR(5)).
.TP
\fIrun_dir/condo.pid\fR, \fIrun_dir/control.sock\fR
The master's pid and its root\-only control socket (status, top, restart\-tenant, reload \-\-tenant, upgrade).
.TP
\fIlog_dir/error.log\fR, \fIlog_dir/SITE.access.log\fR, \fIlog_dir/SITE.error.log\fR
The server's and each site's logs.
.TP
\fIstate_dir/usage.json\fR
The usage ledger (condo usage).
.TP
\fIstate_dir/admin.token\fR
The bearer token that /metrics on admin_listen asks for (made 0600 when missing; server.admin_token_file names another file).
.SH SEE ALSO
\fBcondo.toml\fR(5); README.md and SECURITY.md in /usr/share/doc/condo.
";
