//! The report: one line of the chaos table ([`Row`]), as markdown and as a JSON line
//! appended to `chaos.jsonl`.

use super::*;

/// One line of the chaos table.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub counts: Counts,
    pub detect_ms: Option<u64>,
    pub recover_ms: Option<u64>,
    /// Free text: why recovery is missing, what else was seen.
    pub note: String,
}

/// The markdown table header matching [`Row::markdown`].
pub const TABLE_HEADER: &str = "| scenario | acknowledged | received / expected | lost | duplicates | sessions lost | detect ms | recover ms |";

fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "—".to_string(), |n| n.to_string())
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

impl Row {
    pub fn markdown(&self) -> String {
        let c = &self.counts;
        format!(
            "| {} | {} | {} / {} | {} | {} | {} | {} | {} |",
            self.scenario,
            c.acknowledged,
            c.received,
            c.expected,
            c.lost,
            c.duplicates,
            c.sessions_lost,
            opt(self.detect_ms),
            opt(self.recover_ms)
        )
    }

    pub fn json(&self) -> String {
        let c = &self.counts;
        let o = |n: Option<u64>| n.map_or_else(|| "null".to_string(), |n| n.to_string());
        format!(
            "{{\"scenario\":{},\"acknowledged\":{},\"expected\":{},\"received\":{},\"lost\":{},\
             \"duplicates\":{},\"sessions_lost\":{},\"unacknowledged\":{},\"refused\":{},\
             \"detect_ms\":{},\"recover_ms\":{},\"note\":{}}}",
            json_str(&self.scenario),
            c.acknowledged,
            c.expected,
            c.received,
            c.lost,
            c.duplicates,
            c.sessions_lost,
            c.unacknowledged,
            c.refused,
            o(self.detect_ms),
            o(self.recover_ms),
            json_str(&self.note)
        )
    }

    /// Prints the row (with the header) and appends it as JSON to `$ASTRAMQ_CHAOS_OUT`,
    /// default `$CARGO_TARGET_TMPDIR/chaos.jsonl`. Called before a scenario asserts, so
    /// a failing scenario still reports its numbers.
    pub fn emit(&self) {
        println!("{TABLE_HEADER}\n{}", self.markdown());
        if !self.note.is_empty() {
            println!("  note: {}", self.note);
        }
        let path = std::env::var_os("ASTRAMQ_CHAOS_OUT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos.jsonl")
            });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(f, "{}", self.json()).unwrap();
    }
}
