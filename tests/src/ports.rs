//! Loopback ports for the processes the tests and the benchmarks start.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};

/// The lowest port handed out.
const FIRST: u64 = 10_000;

/// A port on 127.0.0.1 that nothing listens on, for a child process to listen on a moment
/// later; a different one on every call in this process.
///
/// `bind(127.0.0.1:0)` picks from the kernel's ephemeral range, the range every outgoing
/// connection's source port comes from too. Between that pick and the child's own bind, an
/// outgoing connection (the API server retrying a webhook that was just killed, say) can take
/// the port, and the child exits with "address in use". So ports come from below that range,
/// where the kernel never picks source ports, and are checked free when handed out.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let end = ephemeral_start().unwrap_or(32_768);
    let Some(span) = end.checked_sub(FIRST).filter(|&s| s >= 1_000) else {
        return any_port();
    };
    // Each process starts elsewhere in the span, so test binaries or benchmarks running at
    // the same time rarely pick the same port.
    let offset = u64::from(std::process::id()).wrapping_mul(7_919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + offset.wrapping_add(n) % span;
        let port = u16::try_from(port).unwrap_or_else(|_| panic!("port {port} out of range"));
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{end}")
}

/// `127.0.0.1:` a [`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()))
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`).
fn ephemeral_start() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Any free port, when the ephemeral range leaves too few below it.
fn any_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_free_and_below_the_ephemeral_range() {
        let end = ephemeral_start().unwrap_or(32_768);
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for p in ports {
            if end >= FIRST + 1_000 {
                assert!(
                    (FIRST..end).contains(&u64::from(p)),
                    "{p} not in {FIRST}..{end}"
                );
            }
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("free");
        }
    }
}
