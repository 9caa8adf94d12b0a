//! Host → site lookup, the same in the dispatcher (all sites) and in a worker (its
//! tenant's sites only, to notice when a keep-alive connection moves to another tenant).

use std::collections::HashMap;

pub struct RouteTable<T> {
    by_host: HashMap<String, usize>,
    entries: Vec<T>,
    default: Option<usize>,
}

impl<T> RouteTable<T> {
    /// `hosts_of` gives each entry's host names, already normalised (lowercase, no
    /// trailing dot). `default` names the host whose entry answers unknown hosts.
    pub fn new(
        entries: Vec<T>,
        hosts_of: impl Fn(&T) -> Vec<String>,
        default: Option<&str>,
    ) -> Self {
        let mut by_host = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            for host in hosts_of(entry) {
                by_host.entry(host).or_insert(i);
            }
        }
        let default = default.and_then(|d| by_host.get(d).copied());
        Self {
            by_host,
            entries,
            default,
        }
    }

    /// The entry for a request's routing host (as the head parser normalised it):
    /// an exact match, else the default entry, else none.
    pub fn lookup(&self, host: Option<&str>) -> Option<&T> {
        self.exact(host)
            .or_else(|| self.default.map(|i| &self.entries[i]))
    }

    /// Only an exact match, ignoring the default.
    pub fn exact(&self, host: Option<&str>) -> Option<&T> {
        host.and_then(|h| self.by_host.get(h))
            .map(|&i| &self.entries[i])
    }

    pub fn entries(&self) -> &[T] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_then_default() {
        let t = RouteTable::new(
            vec![("a", vec!["a.test", "www.a.test"]), ("b", vec!["b.test"])],
            |e| e.1.iter().map(|s| s.to_string()).collect(),
            Some("b.test"),
        );
        assert_eq!(t.lookup(Some("www.a.test")).unwrap().0, "a");
        assert_eq!(t.lookup(Some("zzz")).unwrap().0, "b");
        assert_eq!(t.lookup(None).unwrap().0, "b");
        assert!(t.exact(Some("zzz")).is_none());
    }
}
