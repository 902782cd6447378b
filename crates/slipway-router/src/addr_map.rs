//! Maps keyed by dyno address, looked up several times per request (the worker's pool of
//! dyno connections, its in-flight counts): hashed with FNV-1a (the `fnv` crate), a few instructions for an
//! address's bytes where the standard library's SipHash costs hundreds. SipHash guards
//! against keys chosen to collide; these keys are dyno addresses the control plane hands
//! out, never anything a client sends.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A map from dyno address to `V`.
pub(crate) type AddrMap<V> = HashMap<SocketAddr, V, fnv::FnvBuildHasher>;

#[cfg(test)]
mod tests {
    use super::AddrMap;
    use std::net::SocketAddr;

    #[test]
    fn addresses_that_differ_only_in_port_or_family_are_different_keys() {
        let mut map = AddrMap::default();
        let a: SocketAddr = "127.0.0.1:8000".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:8001".parse().expect("addr");
        let c: SocketAddr = "[::ffff:127.0.0.1]:8000".parse().expect("addr");
        map.insert(a, 1);
        map.insert(b, 2);
        map.insert(c, 3);
        assert_eq!((map[&a], map[&b], map[&c], map.len()), (1, 2, 3, 3));
    }
}
