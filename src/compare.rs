//! `shmshim compare`: reading two traces (`trace.rs`) of one program, one run on
//! the kernel and one under shmshim, numbering the values that differ between
//! runs (ids, keys, addresses, pids, times) by first appearance, and finding the first
//! call that differs, process by process.

use std::collections::HashMap;

/// One process's calls, normalised, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// `pid#N`, numbered by first appearance in the trace.
    pub name: String,
    pub calls: Vec<String>,
}

/// A trace with its values numbered by first appearance.
#[derive(Debug, Default)]
pub struct Normalized {
    pub processes: Vec<Process>,
}

impl Normalized {
    pub fn calls(&self) -> usize {
        self.processes.iter().map(|p| p.calls.len()).sum()
    }
}

#[derive(Default)]
struct Numbering {
    seen: HashMap<(String, String), usize>,
    next: HashMap<String, usize>,
}

impl Numbering {
    fn name(&mut self, kind: &str, value: &str) -> String {
        // Values every run shares keep their meaning.
        if (kind == "addr" && value == "0x0") || (kind == "time" && value == "0") || (kind == "pid" && value == "0") || (kind == "key" && value == "0x0") {
            return format!("{kind}:{value}");
        }
        if kind == "time" {
            return "time:T".into(); // a time the run took: only "set" compares
        }
        let key = (kind.to_string(), value.to_string());
        if let Some(n) = self.seen.get(&key) {
            return format!("{kind}#{n}");
        }
        let n = self.next.entry(kind.to_string()).or_insert(0);
        *n += 1;
        self.seen.insert(key, *n);
        format!("{kind}#{n}")
    }

    /// Replaces every `kind:value` token (kind one of id, idx, key, addr, pid, time).
    fn line(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for (i, word) in text.split(' ').enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&self.word(word));
        }
        out
    }

    fn word(&mut self, word: &str) -> String {
        // A word may be `id:5`, `cpid=pid:12`, `ds={key=0x1` or `nattch=1}`.
        for kind in ["id", "idx", "key", "addr", "pid", "time"] {
            let tag = format!("{kind}:");
            if let Some(pos) = word.find(&tag) {
                let before = &word[..pos];
                if !before.is_empty() && !before.ends_with('=') && !before.ends_with('{') {
                    continue;
                }
                let rest = &word[pos + tag.len()..];
                let end = rest.find(['}', ',']).unwrap_or(rest.len());
                let named = self.name(kind, &rest[..end]);
                return format!("{before}{named}{}", &rest[end..]);
            }
        }
        word.to_string()
    }
}

/// Parses and normalises a trace file's text (`PID<TAB>call` lines).
pub fn normalize(text: &str) -> Normalized {
    let mut num = Numbering::default();
    let mut order: Vec<String> = Vec::new();
    let mut calls: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let Some((pid, call)) = line.split_once('\t') else { continue };
        let name = num.name("pid", pid.trim());
        if !calls.contains_key(&name) {
            order.push(name.clone());
        }
        let call = num.line(call);
        calls.entry(name).or_default().push(call);
    }
    Normalized { processes: order.into_iter().map(|name| Process { calls: calls.remove(&name).unwrap_or_default(), name }).collect() }
}

/// Where two normalised traces first differ.
#[derive(Debug, PartialEq, Eq)]
pub struct Difference {
    /// The process (by the native run's numbering).
    pub process: String,
    /// Index of the first differing call in that process.
    pub index: usize,
    /// A few calls before it and the differing one (absent: the process made no
    /// such call), native and shim.
    pub native: Vec<String>,
    pub shim: Vec<String>,
}

/// Calls of context shown before a difference.
pub const CONTEXT: usize = 3;

/// The first difference, comparing processes in order of first appearance.
pub fn first_difference(native: &Normalized, shim: &Normalized) -> Option<Difference> {
    let empty = Process { name: String::new(), calls: Vec::new() };
    let n = native.processes.len().max(shim.processes.len());
    for i in 0..n {
        let a = native.processes.get(i).unwrap_or(&empty);
        let b = shim.processes.get(i).unwrap_or(&empty);
        let len = a.calls.len().max(b.calls.len());
        for j in 0..len {
            if a.calls.get(j) != b.calls.get(j) {
                let from = j.saturating_sub(CONTEXT);
                let window = |p: &Process| p.calls.iter().skip(from).take(j + 1 - from).cloned().collect();
                let name = if a.name.is_empty() { b.name.clone() } else { a.name.clone() };
                return Some(Difference { process: name, index: j, native: window(a), shim: window(b) });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_numbered_by_first_appearance() {
        let t = "100\tshmget key:0x0 size=4096 flg=0o1600 -> id:32768\n\
                 100\tshmat id:32768 addr:0x0 flg=0o0 -> addr:0x7f0000\n\
                 101\tshmctl id:32768 cmd=2 -> 0 ds={key=0x0 uid=0 cpid=pid:100 lpid=pid:101 atime=time:1700000000 dtime=time:0 nattch=2}\n\
                 100\tshmdt addr:0x7f0000 -> 0\n";
        let n = normalize(t);
        assert_eq!(n.processes.len(), 2);
        assert_eq!(n.processes[0].name, "pid#1");
        assert_eq!(n.processes[0].calls[0], "shmget key:0x0 size=4096 flg=0o1600 -> id#1");
        assert_eq!(n.processes[0].calls[1], "shmat id#1 addr:0x0 flg=0o0 -> addr#1");
        assert_eq!(n.processes[0].calls[2], "shmdt addr#1 -> 0");
        assert_eq!(n.processes[1].calls[0], "shmctl id#1 cmd=2 -> 0 ds={key=0x0 uid=0 cpid=pid#1 lpid=pid#2 atime=time:T dtime=time:0 nattch=2}");
    }

    #[test]
    fn equal_runs_with_other_numbers_are_identical() {
        let a = normalize("7\tshmget key:0x3f size=1 flg=0o1600 -> id:0\n7\tshmat id:0 addr:0x0 flg=0o0 -> addr:0x1000\n");
        let b = normalize("9\tshmget key:0x51 size=1 flg=0o1600 -> id:65536\n9\tshmat id:65536 addr:0x0 flg=0o0 -> addr:0x5000\n");
        assert_eq!(first_difference(&a, &b), None);
    }

    #[test]
    fn the_first_differing_call_is_found_with_context() {
        let a = normalize("1\tshmget key=0x1 size=1 flg=0o1600 -> id:5\n1\tshmctl id:5 cmd=2 -> 0 ds={nattch=2}\n");
        let b = normalize("1\tshmget key=0x1 size=1 flg=0o1600 -> id:5\n1\tshmctl id:5 cmd=2 -> 0 ds={nattch=1}\n");
        let d = first_difference(&a, &b).unwrap();
        assert_eq!((d.process.as_str(), d.index), ("pid#1", 1));
        assert_eq!(d.native.len(), 2);
        assert!(d.native[1].ends_with("nattch=2}") && d.shim[1].ends_with("nattch=1}"));
        // A call one side lacks is a difference too.
        let c = normalize("1\tshmget key=0x1 size=1 flg=0o1600 -> id:5\n");
        assert_eq!(first_difference(&a, &c).unwrap().shim.len(), 1);
    }
}
