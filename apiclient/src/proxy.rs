//! The proxy a client reaches the API server through, chosen from the environment as kubectl
//! chooses it (Go's `http.ProxyFromEnvironment`): `HTTPS_PROXY` (or `https_proxy`; `HTTP_PROXY`
//! for an `http://` server), except for a server that `NO_PROXY` (or `no_proxy`) names and
//! never for `localhost` or a loopback address.
//!
//! kube reads those variables too, but matches `NO_PROXY` against the proxy's own address, not
//! the server's, so a laptop whose proxy is set for the internet would send a local cluster's
//! requests to the proxy; and a `NO_PROXY` it cannot read (an empty entry, a trailing comma)
//! fails the whole configuration.

use std::net::IpAddr;

use http::Uri;
use ipnet::IpNet;

/// A proxy variable that names no usable proxy.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value} is not a proxy URL kube can use: {why}")]
pub struct ProxyError {
    pub var: &'static str,
    /// The value, its password (if any) hidden.
    pub value: String,
    pub why: String,
}

/// The proxy for requests to `server`, from the variables `var` reads (`std::env::var` in
/// use); `None` for a direct connection.
pub fn from_env(
    server: &Uri,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Uri>, ProxyError> {
    let any = |names: [&'static str; 2]| {
        names
            .into_iter()
            .find_map(|n| var(n).filter(|v| !v.is_empty()).map(|v| (n, v)))
    };
    let names = if server.scheme_str() == Some("http") {
        ["HTTP_PROXY", "http_proxy"]
    } else {
        ["HTTPS_PROXY", "https_proxy"]
    };
    let Some((name, value)) = any(names) else {
        return Ok(None);
    };
    let no_proxy = any(["NO_PROXY", "no_proxy"])
        .map(|(_, v)| v)
        .unwrap_or_default();
    if !uses_proxy(server, &no_proxy) {
        return Ok(None);
    }
    parse(name, &value).map(Some)
}

/// `value`, which `var` set (a variable, or a kubeconfig's `proxy-url`), as a proxy URL,
/// `http://` when it names no scheme (as Go reads it).
pub fn parse(var: &'static str, value: &str) -> Result<Uri, ProxyError> {
    let error = |why: String| ProxyError {
        var,
        value: hide_password(value),
        why,
    };
    let full = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    let uri: Uri = full.parse().map_err(|e| error(format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https" | "socks5") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(uri),
        Some("http" | "https" | "socks5") => Err(error("it names no host".into())),
        other => Err(error(format!(
            "scheme {:?}: use http://, https:// or socks5://",
            other.unwrap_or_default()
        ))),
    }
}

/// `value` with the password of its user info, if any, replaced by `***`.
pub fn hide_password(value: &str) -> String {
    let (scheme, rest) = value.split_once("://").unwrap_or(("", value));
    let Some((user_info, host)) = rest.split_once('@') else {
        return value.to_owned();
    };
    let user = user_info.split(':').next().unwrap_or_default();
    let prefix = if scheme.is_empty() {
        String::new()
    } else {
        format!("{scheme}://")
    };
    format!("{prefix}{user}:***@{host}")
}

/// Whether requests to `server` go through the proxy, given `no_proxy` (Go's rules: `*`; an IP
/// address, optionally with a port; a CIDR block; a domain, matching itself and its subdomains,
/// or with a leading `.` or `*.` its subdomains only, optionally with a port).
fn uses_proxy(server: &Uri, no_proxy: &str) -> bool {
    let Some(host) = server.host() else {
        return false;
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = server
        .port_u16()
        .unwrap_or(if server.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let ip: Option<IpAddr> = host.parse().ok();
    if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
        return false;
    }
    for entry in no_proxy.split(',') {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            continue;
        }
        if entry == "*" {
            return false;
        }
        if let Ok(net) = entry.parse::<IpNet>() {
            if ip.is_some_and(|ip| net.contains(&ip)) {
                return false;
            }
            continue;
        }
        let (name, entry_port) = split_port(&entry);
        let port_matches = entry_port.is_none_or(|p| p == port);
        if let Ok(entry_ip) = name.parse::<IpAddr>() {
            if ip == Some(entry_ip) && port_matches {
                return false;
            }
            continue;
        }
        if name.is_empty() {
            continue;
        }
        let name = name.strip_prefix('*').unwrap_or(name);
        let subdomains_only = name.starts_with('.');
        let suffix = if subdomains_only {
            name.to_owned()
        } else {
            format!(".{name}")
        };
        let matches = host.ends_with(&suffix) || (!subdomains_only && host == name);
        if matches && port_matches {
            return false;
        }
    }
    true
}

/// `host:port` as the host and the port; `[v6]:port` and `[v6]` as the address; anything else
/// as a host with no port.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, after)) => (ip, after.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (entry, None),
        };
    }
    match entry.rsplit_once(':') {
        // One colon: a port. More: an IPv6 address without brackets.
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy_for(server: &str, vars: &[(&str, &str)]) -> Option<String> {
        let server: Uri = server.parse().expect("a server URL");
        from_env(&server, |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .expect("a usable proxy")
        .map(|u| u.to_string())
    }

    const PROXY: (&str, &str) = ("HTTPS_PROXY", "http://proxy.corp:3128");

    #[test]
    fn a_server_goes_through_the_proxy_unless_no_proxy_names_it() {
        let through = Some("http://proxy.corp:3128/".to_owned());
        let server = "https://api.cluster.example.com:6443";
        assert_eq!(proxy_for(server, &[PROXY]), through);
        assert_eq!(proxy_for(server, &[]), None, "no proxy set");
        for no_proxy in [
            "*",
            "example.com",
            ".example.com",
            "*.example.com",
            "cluster.example.com",
            "api.cluster.example.com:6443",
            "  other.org , EXAMPLE.COM ,",
            "a,,b,example.com",
        ] {
            assert_eq!(
                proxy_for(server, &[PROXY, ("NO_PROXY", no_proxy)]),
                None,
                "{no_proxy:?}"
            );
        }
        for no_proxy in [
            "other.example.com",
            "xample.com",
            "api.cluster.example.com:443",
            "10.0.0.0/8",
            "",
        ] {
            assert_eq!(
                proxy_for(server, &[PROXY, ("no_proxy", no_proxy)]),
                through,
                "{no_proxy:?}"
            );
        }
        // A leading dot is for subdomains only.
        assert_eq!(
            proxy_for(
                "https://example.com",
                &[PROXY, ("NO_PROXY", ".example.com")]
            ),
            through
        );
    }

    #[test]
    fn addresses_are_matched_by_address_port_and_block() {
        let through = Some("http://proxy.corp:3128/".to_owned());
        let server = "https://10.1.2.3:6443";
        for no_proxy in ["10.1.2.3", "10.1.2.3:6443", "10.0.0.0/8", "10.1.2.3/32"] {
            assert_eq!(proxy_for(server, &[PROXY, ("NO_PROXY", no_proxy)]), None);
        }
        for no_proxy in ["10.1.2.4", "10.1.2.3:443", "192.168.0.0/16"] {
            assert_eq!(proxy_for(server, &[PROXY, ("NO_PROXY", no_proxy)]), through);
        }
        let v6 = "https://[fd00::1]:6443";
        assert_eq!(proxy_for(v6, &[PROXY, ("NO_PROXY", "fd00::/8")]), None);
        assert_eq!(
            proxy_for(v6, &[PROXY, ("NO_PROXY", "[fd00::1]:6443")]),
            None
        );
        assert_eq!(proxy_for(v6, &[PROXY, ("NO_PROXY", "fd00::2")]), through);
    }

    #[test]
    fn localhost_and_loopback_never_go_through_a_proxy() {
        for server in [
            "https://127.0.0.1:6443",
            "https://127.8.9.10",
            "https://localhost:6443",
            "https://[::1]:6443",
        ] {
            assert_eq!(proxy_for(server, &[PROXY]), None, "{server}");
        }
    }

    #[test]
    fn the_variable_follows_the_servers_scheme_and_a_bare_host_is_http() {
        let server = "http://api.example.com:8080";
        assert_eq!(
            proxy_for(server, &[PROXY]),
            None,
            "HTTPS_PROXY is for https"
        );
        assert_eq!(
            proxy_for(server, &[("http_proxy", "proxy.corp:3128")]).as_deref(),
            Some("http://proxy.corp:3128/")
        );
        assert_eq!(
            proxy_for(
                "https://api.example.com",
                &[("https_proxy", "socks5://127.0.0.1:1080")]
            )
            .as_deref(),
            Some("socks5://127.0.0.1:1080/")
        );
        // HTTPS_PROXY first, https_proxy when it is unset or empty.
        assert_eq!(
            proxy_for(
                "https://api.example.com",
                &[("HTTPS_PROXY", ""), ("https_proxy", "http://other:1")]
            )
            .as_deref(),
            Some("http://other:1/")
        );
    }

    #[test]
    fn an_unusable_proxy_is_refused_without_its_password() {
        let server: Uri = "https://api.example.com".parse().expect("URL");
        let refused = |value: &str| {
            from_env(&server, |name| {
                (name == "HTTPS_PROXY").then(|| value.to_owned())
            })
            .expect_err("refused")
            .to_string()
        };
        let said = refused("ftp://user:s3cret@proxy.corp:21");
        assert!(said.contains("scheme \"ftp\""), "{said}");
        assert!(!said.contains("s3cret"), "{said}");
        assert!(said.contains("ftp://user:***@proxy.corp:21"), "{said}");
        assert!(refused("http://pro xy:1").contains("HTTPS_PROXY=http://pro xy:1"));
    }
}
