//! The Lua scripts, kept as `.lua` files and called by SHA.

use redis::Script;

/// Every script the store runs. [`Script`] calls `EVALSHA` and loads the
/// script once on `NOSCRIPT` (after a server restart or `SCRIPT FLUSH`).
pub(crate) struct Scripts {
    pub create: Script,
    pub commit: Script,
    pub claim: Script,
    pub purge: Script,
    pub record_delivery: Script,
    pub settle_delivery: Script,
    pub append_log: Script,
    pub read_log: Script,
    pub track_report: Script,
    pub save_report: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            create: Script::new(include_str!("lua/create.lua")),
            commit: Script::new(include_str!("lua/commit.lua")),
            claim: Script::new(include_str!("lua/claim.lua")),
            purge: Script::new(include_str!("lua/purge.lua")),
            record_delivery: Script::new(include_str!("lua/record_delivery.lua")),
            settle_delivery: Script::new(include_str!("lua/settle_delivery.lua")),
            append_log: Script::new(include_str!("lua/append_log.lua")),
            read_log: Script::new(include_str!("lua/read_log.lua")),
            track_report: Script::new(include_str!("lua/track_report.lua")),
            save_report: Script::new(include_str!("lua/save_report.lua")),
        }
    }

    pub fn all(&self) -> [&Script; 10] {
        [
            &self.create,
            &self.commit,
            &self.claim,
            &self.purge,
            &self.record_delivery,
            &self.settle_delivery,
            &self.append_log,
            &self.read_log,
            &self.track_report,
            &self.save_report,
        ]
    }
}
