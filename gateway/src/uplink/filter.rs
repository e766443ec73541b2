//! Which readings an uplink carries: `adapters`, `devices`, `points` and `carries` of an
//! `[[uplinks]]` entry, plus readings sent again to one uplink only (`fieldgate queue
//! requeue`).

use crate::queue::Queued;

/// The readings an uplink carries. Empty lists mean "all"; the three lists must all match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Adapter ids (exact).
    pub adapters: Vec<String>,
    /// Device id globs (`*` any run of characters, `?` one character).
    pub devices: Vec<String>,
    /// Point name globs.
    pub points: Vec<String>,
    /// Alert events only (`carries = "alerts"`).
    pub alerts_only: bool,
}

impl Filter {
    /// True if the uplink `uplink` carries `q`.
    pub fn carries(&self, uplink: &str, q: &Queued) -> bool {
        if q.only_for.as_deref().is_some_and(|only| only != uplink) {
            return false;
        }
        // A requeued dead letter for this uplink is sent whatever it is: it was carried once
        // (requeue keeps the reading, not its alert row).
        if self.alerts_only && q.alert.is_none() && q.only_for.is_none() {
            return false;
        }
        let r = &q.reading;
        (self.adapters.is_empty() || self.adapters.iter().any(|a| a == r.source.as_str()))
            && (self.devices.is_empty() || self.devices.iter().any(|g| glob(g, &r.device)))
            && (self.points.is_empty() || self.points.iter().any(|g| glob(g, &r.point)))
    }
}

/// Matches `text` against `pattern`: `*` is any run of characters (also none), `?` exactly
/// one; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Greedy with backtracking to the last star: linear for patterns with one star, and
    // O(len(p) * len(t)) at worst.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("tank-*", "tank-1", true),
            ("tank-*", "tank-", true),
            ("tank-*", "pump-1", false),
            ("*level*", "tank_level_pct", true),
            ("*level", "level_pct", false),
            ("t?nk", "tank", true),
            ("t?nk", "tnk", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*.*", "pump.speed", true),
            ("level", "level", true),
            ("level", "Level", false),
            ("température", "température", true),
            ("temp?rature", "température", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob(p, t), want, "glob({p:?}, {t:?})");
        }
    }
}
