//! A client from the kubectl-style connection flags, and whether its cluster serves TaskRuns.
//!
//! The kubeconfig is found as kubectl finds it: `--kubeconfig` alone; else the files listed in
//! `$KUBECONFIG` that exist, merged (a missing one is skipped); else `~/.kube/config`; and only
//! when none of these is there, the pod's service account (in-cluster). A kubeconfig that was
//! asked for but cannot be used is an error, never a reason to act on whatever cluster the
//! process runs in: `migrate-helm --delete-releases` run in a pod must not reach the pod's own
//! cluster because a file name was mistyped.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use kube::Resource;
use kube::config::{Config, KubeConfigOptions, Kubeconfig, KubeconfigError};
use taskrun::TaskRun;
use taskrun_apiclient::proxy;

use crate::args::Connection;
use crate::error::Error;

/// Where the client's configuration comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// These kubeconfig files, merged in order (the first to set a value wins).
    Files(Vec<PathBuf>),
    /// The pod's service account: no kubeconfig was given and there is none at the default
    /// path.
    InCluster,
}

/// kubectl's choice of configuration, from `--kubeconfig` (`flag`), `$KUBECONFIG` (`env`), the
/// default path (`~/.kube/config`, `None` without a home directory) and `--context`; `missing`
/// says whether a path does not exist.
pub fn choose_source(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    default: Option<&Path>,
    context: Option<&str>,
    missing: impl Fn(&Path) -> bool,
) -> Result<Source, Error> {
    if let Some(path) = flag {
        return Ok(Source::Files(vec![path.to_owned()]));
    }
    let listed: Vec<PathBuf> = env
        .map(|value| std::env::split_paths(value).collect())
        .unwrap_or_default();
    let listed: Vec<PathBuf> = listed
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    if !listed.is_empty() {
        let present: Vec<PathBuf> = listed.iter().filter(|p| !missing(p)).cloned().collect();
        if present.is_empty() {
            return Err(Error::Connection(format!(
                "none of the kubeconfig files KUBECONFIG lists exists ({}): fix KUBECONFIG or give --kubeconfig",
                shown_paths(&listed)
            )));
        }
        return Ok(Source::Files(present));
    }
    if let Some(default) = default.filter(|p| !missing(p)) {
        return Ok(Source::Files(vec![default.to_owned()]));
    }
    if let Some(context) = context {
        return Err(Error::Connection(format!(
            "--context {context:?} names a kubeconfig context, but there is no kubeconfig (KUBECONFIG is not set and {} does not exist): give --kubeconfig",
            default.map_or_else(|| "~/.kube/config".into(), |p| p.display().to_string())
        )));
    }
    Ok(Source::InCluster)
}

/// The context to use: `--context`, else the kubeconfig's current-context; it must be one the
/// kubeconfig (read from `files`) has.
pub fn pick_context<'a>(
    kubeconfig: &'a Kubeconfig,
    flag: Option<&'a str>,
    files: &[PathBuf],
) -> Result<&'a str, Error> {
    let known: Vec<&str> = kubeconfig
        .contexts
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let has = if known.is_empty() {
        "it has none".to_owned()
    } else {
        format!("it has {}", known.join(", "))
    };
    let current = kubeconfig
        .current_context
        .as_deref()
        .filter(|c| !c.is_empty());
    let Some(name) = flag.or(current) else {
        return Err(Error::Connection(format!(
            "the kubeconfig ({}) sets no current-context: choose one with --context ({has})",
            shown_paths(files)
        )));
    };
    if known.contains(&name) {
        Ok(name)
    } else {
        let from = if flag.is_some() {
            "--context"
        } else {
            "current-context"
        };
        Err(Error::Connection(format!(
            "context {name:?} ({from}) is not in the kubeconfig ({}): {has}",
            shown_paths(files)
        )))
    }
}

fn shown_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// The kubeconfig files read and merged in order, as kubectl merges them: the first file to set
/// a value wins, and a value set to the empty string counts as not set (client-go merges with
/// mergo, which skips empty values). kube's `Kubeconfig::merge` keeps the first value present
/// even when empty, so a file with `current-context: ""` ahead of the one that names the
/// context would leave none; such values are cleared in each file before merging.
fn read_merged(files: &[PathBuf]) -> Result<Kubeconfig, KubeconfigError> {
    files
        .iter()
        .try_fold(Kubeconfig::default(), |merged, path| {
            Kubeconfig::read_from(path).and_then(|next| merged.merge(without_empty(next)))
        })
}

/// `config` with its empty top-level values unset. The named clusters, users and contexts are
/// merged whole, first name wins, as kubectl does, so only these can shadow a later file:
/// `current-context`, and `kind`/`apiVersion`, which kube compares across files (an empty one
/// against `Config` would be refused as a mismatch).
fn without_empty(mut config: Kubeconfig) -> Kubeconfig {
    for value in [
        &mut config.current_context,
        &mut config.kind,
        &mut config.api_version,
    ] {
        if value.as_deref() == Some("") {
            *value = None;
        }
    }
    config
}

/// The client and the namespace to work in (the flag, else the context's, else `default`).
pub async fn connect(conn: &Connection) -> Result<(kube::Client, String), Error> {
    let default = std::env::home_dir().map(|home| home.join(".kube").join("config"));
    let source = choose_source(
        conn.kubeconfig.as_deref(),
        std::env::var_os("KUBECONFIG").as_deref(),
        default.as_deref(),
        conn.context.as_deref(),
        |path| matches!(std::fs::metadata(path), Err(e) if e.kind() == ErrorKind::NotFound),
    )?;
    let config = match source {
        Source::Files(files) => {
            let kubeconfig = read_merged(&files).map_err(|source| Error::Kubeconfig {
                files: shown_paths(&files),
                source,
            })?;
            let context = pick_context(&kubeconfig, conn.context.as_deref(), &files)?.to_owned();
            let explicit = proxy_url_of(&kubeconfig, &context);
            let options = KubeConfigOptions {
                context: Some(context),
                ..KubeConfigOptions::default()
            };
            let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|source| match source {
                    // kube reads NO_PROXY whenever a proxy is set, and more strictly than
                    // kubectl (which skips an empty entry) or `proxy::from_env`.
                    KubeconfigError::ParseNoProxy(e) => Error::Connection(format!(
                        "kube cannot read NO_PROXY (or no_proxy): {e}; remove its empty or malformed entries (a trailing comma, say)"
                    )),
                    source => Error::Kubeconfig {
                        files: shown_paths(&files),
                        source,
                    },
                })?;
            // As kubectl: the cluster's proxy-url, else the proxy variables for this server.
            config.proxy_url = match explicit {
                Some(url) => Some(proxy::parse("proxy-url", &url)?),
                None => proxy::from_env(&config.cluster_url, |name| std::env::var(name).ok())?,
            };
            config
        }
        Source::InCluster => Config::incluster().map_err(|source| Error::InCluster {
            default: default.map_or_else(|| "~/.kube/config".into(), |p| p.display().to_string()),
            source,
        })?,
    };
    // With a read timeout (kube sets none: a connection gone silently dead would hang the
    // command for good; a request that then times out is reported as one that may have taken
    // effect, and running the command again is safe) and brief retries of 429/503/504.
    let namespace = namespace(conn.namespace.as_deref(), &config.default_namespace);
    let client = taskrun_apiclient::client(config).map_err(Error::Client)?;
    Ok((client, namespace))
}

/// The `proxy-url` the kubeconfig sets for the cluster of `context`, if any.
fn proxy_url_of(kubeconfig: &Kubeconfig, context: &str) -> Option<String> {
    let named = kubeconfig.contexts.iter().find(|c| c.name == context)?;
    let cluster = &named.context.as_ref()?.cluster;
    kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == *cluster)?
        .cluster
        .as_ref()?
        .proxy_url
        .clone()
        .filter(|url| !url.is_empty())
}

/// The namespace to work in: the flag (never empty, args refuses that), else the context's, else
/// `default`. A context with `namespace: ""` means `default`, as in kubectl; taken as it is, it
/// would make every request's path `namespaces//…`, which lists every namespace.
fn namespace(flag: Option<&str>, of_context: &str) -> String {
    match flag {
        Some(namespace) => namespace,
        None if of_context.is_empty() => "default",
        None => of_context,
    }
    .to_owned()
}

/// Asks the cluster's discovery whether it serves TaskRuns, before any command touches one.
/// Without the CRD every TaskRun call answers a bare "404 page not found": `context add` ended
/// with that, and `migrate-helm` failed each release with it.
pub async fn check_taskruns_served(client: &kube::Client) -> Result<(), Error> {
    let api_version = TaskRun::api_version(&());
    let plural = TaskRun::plural(&());
    let served = match client.list_api_group_resources(&api_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == plural),
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(e) => {
            return Err(Error::api(
                format!("asking the cluster for {api_version}"),
                e,
            ));
        }
    };
    if served {
        Ok(())
    } else {
        Err(Error::NotServed {
            resource: format!("{plural}.{api_version}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn paths(list: &[&str]) -> Vec<PathBuf> {
        list.iter().map(PathBuf::from).collect()
    }

    /// `choose_source` where only the paths in `present` exist.
    fn choose(
        flag: Option<&str>,
        env: Option<&str>,
        context: Option<&str>,
        present: &[&str],
    ) -> Result<Source, Error> {
        let env = env.map(OsString::from);
        choose_source(
            flag.map(Path::new),
            env.as_deref(),
            Some(Path::new("/home/u/.kube/config")),
            context,
            |p| !present.iter().any(|q| Path::new(q) == p),
        )
    }

    fn message(result: Result<Source, Error>) -> String {
        match result {
            Err(e) => e.to_string(),
            Ok(source) => panic!("expected an error, got {source:?}"),
        }
    }

    #[test]
    fn the_flag_wins_and_must_be_read_even_if_missing() {
        let source = choose(Some("/x/given"), Some("/a"), None, &["/a"]);
        assert_eq!(source.ok(), Some(Source::Files(paths(&["/x/given"]))));
    }

    #[test]
    fn missing_files_in_kubeconfig_are_skipped_as_kubectl_does() {
        let source = choose(
            None,
            Some("/gone:/real::/also-real"),
            None,
            &["/real", "/also-real"],
        );
        assert_eq!(
            source.ok(),
            Some(Source::Files(paths(&["/real", "/also-real"])))
        );
    }

    #[test]
    fn a_kubeconfig_list_with_no_file_is_an_error_not_in_cluster() {
        let e = message(choose(None, Some("/gone:/also-gone"), None, &[]));
        assert!(
            e.contains("KUBECONFIG") && e.contains("/gone, /also-gone"),
            "{e}"
        );
    }

    #[test]
    fn the_default_path_comes_before_in_cluster() {
        let default = "/home/u/.kube/config";
        assert_eq!(
            choose(None, None, None, &[default]).ok(),
            Some(Source::Files(paths(&[default])))
        );
        // An empty KUBECONFIG counts as unset, as with kubectl.
        assert_eq!(
            choose(None, Some(""), None, &[default]).ok(),
            Some(Source::Files(paths(&[default])))
        );
    }

    #[test]
    fn in_cluster_only_without_any_kubeconfig_or_context() {
        assert_eq!(choose(None, None, None, &[]).ok(), Some(Source::InCluster));
        assert_eq!(
            choose(None, Some(""), None, &[]).ok(),
            Some(Source::InCluster)
        );
        let e = message(choose(None, None, Some("prod"), &[]));
        assert!(
            e.contains("\"prod\"") && e.contains("no kubeconfig") && e.contains("--kubeconfig"),
            "{e}"
        );
    }

    fn kubeconfig(current: Option<&str>, contexts: &[&str]) -> Kubeconfig {
        let contexts: Vec<String> = contexts
            .iter()
            .map(|c| format!("- name: {c}\n  context: {{cluster: c, user: u}}\n"))
            .collect();
        let current = current.map_or_else(String::new, |c| format!("current-context: {c}\n"));
        Kubeconfig::from_yaml(&format!(
            "apiVersion: v1\nkind: Config\n{current}contexts:\n{}",
            contexts.concat()
        ))
        .expect("a kubeconfig")
    }

    /// `KUBECONFIG=extra:config`, extra setting empty values: kubectl takes config's.
    #[test]
    fn empty_values_in_an_earlier_file_do_not_shadow_a_later_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = dir.path().join("extra.yaml");
        let config = dir.path().join("config");
        std::fs::write(
            &extra,
            "apiVersion: \"\"\nkind: \"\"\ncurrent-context: \"\"\ncontexts:\n- name: extra\n  context: {cluster: c, user: u}\n",
        )
        .expect("write");
        std::fs::write(
            &config,
            "apiVersion: v1\nkind: Config\ncurrent-context: dev\ncontexts:\n- name: dev\n  context: {cluster: c, user: u}\n",
        )
        .expect("write");
        let files = vec![extra.clone(), config.clone()];
        let merged = read_merged(&files).expect("merged");
        assert_eq!(pick_context(&merged, None, &files).ok(), Some("dev"));
        assert_eq!(merged.kind.as_deref(), Some("Config"));
        assert_eq!(merged.api_version.as_deref(), Some("v1"));

        // A value that is set still wins from the first file that sets it.
        std::fs::write(
            &extra,
            "current-context: extra\ncontexts:\n- name: extra\n  context: {cluster: c, user: u}\n",
        )
        .expect("write");
        let merged = read_merged(&files).expect("merged");
        assert_eq!(pick_context(&merged, None, &files).ok(), Some("extra"));
    }

    #[test]
    fn the_context_must_be_in_the_kubeconfig() {
        let files = paths(&["/k1", "/k2"]);
        let config = kubeconfig(Some("dev"), &["dev", "prod"]);
        assert_eq!(pick_context(&config, None, &files).ok(), Some("dev"));
        assert_eq!(
            pick_context(&config, Some("prod"), &files).ok(),
            Some("prod")
        );

        let e = pick_context(&config, Some("stage"), &files)
            .expect_err("unknown")
            .to_string();
        assert!(
            e.contains("\"stage\" (--context)")
                && e.contains("/k1, /k2")
                && e.contains("it has dev, prod"),
            "{e}"
        );
        let stale = kubeconfig(Some("gone"), &["dev"]);
        let e = pick_context(&stale, None, &files)
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("\"gone\" (current-context)"), "{e}");
        let unset = kubeconfig(None, &["dev"]);
        let e = pick_context(&unset, None, &files)
            .expect_err("unset")
            .to_string();
        assert!(
            e.contains("no current-context") && e.contains("--context"),
            "{e}"
        );
    }

    #[test]
    fn the_namespace_is_the_flags_else_the_contexts_and_an_empty_one_is_default() {
        assert_eq!(namespace(Some("team-a"), "team-b"), "team-a");
        assert_eq!(namespace(None, "team-b"), "team-b");
        assert_eq!(namespace(None, ""), "default");
    }
}
