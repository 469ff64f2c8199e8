//! The command line. Every command has `--help`; the connection flags are the ones kubectl
//! users expect, and are global so they work before or after the subcommand.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use taskrun::FileType;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  runtime or API failure (cannot connect, TaskRun CRD not installed, TaskRun not found or
     being deleted, retries exhausted, ...)
  2  usage error or invalid input (bad flags, a file that would be rejected, a file that already
     exists, a TaskRun the API server or its webhook refuses as invalid); nothing was changed
  3  migrate-helm: at least one release could not be migrated or uninstalled (the others were):
     it failed (the table says why), or it is not done yet because something was still under
     way (its legacy Job running, a Helm operation in progress): run the command again once that
     has finished. A release with no deployed revision (its install failed, or its --wait
     timed out) fails: give it one (helm upgrade or rollback) or uninstall it. Releases skipped
     for good (uninstalled with --keep-history, or being uninstalled) do not count: with only
     those, the exit code is 0";

/// kubectl plugin for TaskRuns (taskruns.orchestrator.io): add context to a running task, and
/// migrate tasks from Helm releases of the legacy `claude-code` chart.
#[derive(Debug, Parser)]
#[command(name = "kubectl-taskrun", bin_name = "kubectl taskrun", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub conn: Connection,

    /// Log format on stderr (the level comes from RUST_LOG, default `warn` without kube's line
    /// for each failed HTTP attempt). The log lines only: the command's own `error:` and
    /// `warning:` lines are text either way.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line of this process; on a usage error, says so and exits with code 2
    /// (as `Cli::parse`, with the checks clap cannot make).
    pub fn parse_checked() -> Self {
        Self::try_parse_checked_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// `Cli::try_parse_from`, then the checks clap cannot make: a global flag given before the
    /// subcommand reaches it only after clap has checked conflicts, so `-n NS migrate-helm -A`
    /// would get through `conflicts_with` and widen the run to every namespace.
    pub fn try_parse_checked_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Self::try_parse_from(args)?;
        if let Command::MigrateHelm(migrate) = &cli.command
            && migrate.all_namespaces
            && cli.conn.namespace.is_some()
        {
            let mut cmd = Self::command();
            cmd.build();
            let message = "-A/--all-namespaces cannot be used with -n/--namespace: -A looks in \
                           every namespace, -n in one; give one of them";
            let err = match cmd.find_subcommand_mut("migrate-helm") {
                Some(sub) => sub.error(ErrorKind::ArgumentConflict, message),
                None => cmd.error(ErrorKind::ArgumentConflict, message),
            };
            return Err(err);
        }
        Ok(cli)
    }
}

/// Where the API server is, as kubectl takes it.
#[derive(Debug, Args, Clone, Default)]
pub struct Connection {
    /// Path to the kubeconfig file (default, as kubectl: the files $KUBECONFIG lists that exist,
    /// merged (an error if none exists); when KUBECONFIG is unset or empty, ~/.kube/config;
    /// only when that does not exist either, the in-cluster service account).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: the current context).
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub context: Option<String>,

    /// The namespace (default: the context's namespace, else `default`; with the in-cluster
    /// service account, the pod's own namespace, from
    /// /var/run/secrets/kubernetes.io/serviceaccount/namespace).
    #[arg(
        short = 'n',
        long,
        global = true,
        value_name = "NAMESPACE",
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Change a TaskRun's context.
    #[command(subcommand)]
    Context(ContextCommand),

    /// Migrate tasks from Helm releases of the legacy `claude-code` chart to TaskRuns.
    ///
    /// Reads the Helm 3 release Secrets directly (no helm binary needed), builds one TaskRun per
    /// deployed `{service}-task-{id}` release from its `{service}-task-{id}-files` ConfigMap,
    /// creates it through the API (the admission webhook judges it like any other client's),
    /// verifies it and prints a table. Safe to run again: a TaskRun that already matches is left
    /// alone (with --delete-releases, only annotated orchestrator.io/migrated-from first). Helm
    /// releases are only uninstalled with --delete-releases, and only those whose TaskRun was
    /// verified.
    #[command(after_help = EXIT_CODES)]
    MigrateHelm(MigrateArgs),
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// Add markdown files to a TaskRun and raise its contextVersion by one.
    ///
    /// Uses server-side apply with the field manager `taskrun-cli`: the files are merged into
    /// spec.markdownFiles by filename, and every other file and field (including those owned by
    /// other managers, such as a GitOps tool) is left as it is. Concurrent calls never lose an
    /// update: each apply is conditional on the resourceVersion it read, and retried on conflict.
    /// Files are checked with the webhook's rules for files (name, content, size, number) before
    /// anything is sent. A file whose name the TaskRun already has is refused: context is added,
    /// never replaced. If it already has every file exactly as given, nothing is sent (a retried
    /// call does not add a version).
    #[command(after_help = EXIT_CODES)]
    Add(ContextAddArgs),
}

#[derive(Debug, Args)]
pub struct ContextAddArgs {
    /// The TaskRun's name.
    #[arg(value_parser = NonEmptyStringValueParser::new())]
    pub name: String,

    /// A markdown file to add; its base name becomes the filename. Repeat for several files.
    #[arg(short = 'f', long = "file", value_name = "FILE.md", required = true)]
    pub files: Vec<PathBuf>,

    /// The fileType the added files get: task, design-spec, prompt, context or
    /// acceptance-criteria.
    #[arg(long = "type", value_name = "TYPE", value_parser = file_type, default_value = "context")]
    pub file_type: FileType,
}

/// A `FileType` by its wire name, as in manifests; an unknown one is refused with the list of
/// those there are.
fn file_type(value: &str) -> Result<FileType, String> {
    FileType::KNOWN
        .into_iter()
        .find(|t| t.as_str() == value)
        .ok_or_else(|| {
            let known: Vec<String> = FileType::KNOWN
                .iter()
                .map(|t| format!("`{}`", t.as_str()))
                .collect();
            format!(
                "unknown file type {}: one of {}",
                taskrun::validation::shown(value),
                known.join(", ")
            )
        })
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Look for releases in every namespace (instead of the context's namespace); not with -n,
    /// wherever that is given.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,

    /// Change nothing: say what would happen (the API server and webhook judge each TaskRun
    /// with a server-side dry-run create).
    #[arg(long)]
    pub dry_run: bool,

    /// After a release's TaskRun is verified, uninstall the release: delete the resources its
    /// manifest lists and all its revision Secrets, as `helm uninstall` does. A TaskRun that was
    /// there already is first annotated orchestrator.io/migrated-from, so that a run cut short
    /// after the release's files are deleted can be finished by the next. Releases with
    /// delete hooks are left for `helm uninstall`; a release whose Job has not finished, or that
    /// a Helm operation is working on, is kept until a later run.
    #[arg(long)]
    pub delete_releases: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_work_before_and_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "kubectl-taskrun",
            "--context",
            "dev",
            "context",
            "add",
            "t1",
            "-f",
            "a.md",
            "-n",
            "ns",
            "-f",
            "b.md",
        ])
        .expect("parses");
        assert_eq!(cli.conn.context.as_deref(), Some("dev"));
        assert_eq!(cli.conn.namespace.as_deref(), Some("ns"));
        let Command::Context(ContextCommand::Add(add)) = cli.command else {
            panic!("not context add")
        };
        assert_eq!(add.files.len(), 2);
        assert_eq!(add.file_type, FileType::Context);
    }

    #[test]
    fn every_file_type_is_taken_by_its_wire_name_and_listed_in_the_help() {
        // The parser's refusal lists every FileType this build knows.
        let refusal = file_type("nope").expect_err("unknown");
        let names: Vec<&str> = refusal.split('`').skip(1).step_by(2).collect();
        let known: Vec<&str> = FileType::KNOWN.iter().map(FileType::as_str).collect();
        assert_eq!(names, known, "{refusal}");
        let mut add = Cli::command();
        let help = add
            .find_subcommand_mut("context")
            .and_then(|c| c.find_subcommand_mut("add"))
            .expect("context add")
            .render_long_help()
            .to_string();
        let help: String = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for name in names {
            assert_eq!(file_type(name).as_ref().map(FileType::as_str), Ok(name));
            assert!(help.contains(name), "{name} is not in the help:\n{help}");
        }
        let cli = Cli::try_parse_from([
            "kubectl-taskrun",
            "context",
            "add",
            "t1",
            "-f",
            "a.md",
            "--type",
            "design-spec",
        ])
        .expect("parses");
        let Command::Context(ContextCommand::Add(add)) = cli.command else {
            panic!("not context add")
        };
        assert_eq!(add.file_type, FileType::DesignSpec);
        let err = Cli::try_parse_from([
            "kubectl-taskrun",
            "context",
            "add",
            "t1",
            "-f",
            "a.md",
            "--type",
            "notes",
        ])
        .expect_err("unknown type");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("acceptance-criteria"), "{err}");
    }

    #[test]
    fn all_namespaces_and_namespace_exclude_each_other_in_any_order() {
        for args in [
            &["migrate-helm", "-A", "-n", "x"][..],
            &["migrate-helm", "-n", "x", "-A"],
            // -n before the subcommand reaches it after clap's conflict check.
            &["-n", "team-a", "migrate-helm", "-A", "--delete-releases"],
            &["--namespace=team-a", "migrate-helm", "--all-namespaces"],
            &[
                "-n",
                "team-a",
                "--context",
                "dev",
                "migrate-helm",
                "--dry-run",
                "-A",
            ],
        ] {
            let err = Cli::try_parse_checked_from(["kubectl-taskrun"].iter().chain(args))
                .expect_err("conflict");
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}");
            let text = err.to_string();
            assert!(
                text.contains("--all-namespaces") && text.contains("--namespace"),
                "{args:?}: {text}"
            );
        }
        // Each alone is fine, and -n still reaches context add from before the subcommand.
        let cli =
            Cli::try_parse_checked_from(["kubectl-taskrun", "migrate-helm", "-A"]).expect("parses");
        assert!(matches!(cli.command, Command::MigrateHelm(m) if m.all_namespaces));
        let cli = Cli::try_parse_checked_from(["kubectl-taskrun", "-n", "x", "migrate-helm"])
            .expect("parses");
        assert_eq!(cli.conn.namespace.as_deref(), Some("x"));
        let cli = Cli::try_parse_checked_from([
            "kubectl-taskrun",
            "-n",
            "x",
            "context",
            "add",
            "t1",
            "-f",
            "a.md",
        ])
        .expect("parses");
        assert_eq!(cli.conn.namespace.as_deref(), Some("x"));
    }

    /// An empty value (`-n "$NS"` with NS unset) is refused as a usage error: an empty
    /// namespace would make the requests' paths `namespaces//…`, which the API server answers
    /// for every namespace, and `migrate-helm --delete-releases` would reach all of them.
    #[test]
    fn empty_connection_values_and_names_are_usage_errors() {
        for args in [
            &["-n", "", "migrate-helm", "--delete-releases"][..],
            &["migrate-helm", "--namespace="],
            &["--context", "", "migrate-helm"],
            &["--kubeconfig", "", "migrate-helm"],
            &["context", "add", "", "-f", "a.md"],
        ] {
            let err = Cli::try_parse_checked_from(["kubectl-taskrun"].iter().chain(args))
                .expect_err("empty value");
            assert_eq!(err.exit_code(), 2, "{args:?}");
            // clap's words: "a value is required for …" or "invalid value '' for …".
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::InvalidValue | ErrorKind::ValueValidation
                ),
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn context_add_needs_a_file() {
        assert!(Cli::try_parse_from(["kubectl-taskrun", "context", "add", "t1"]).is_err());
    }
}
