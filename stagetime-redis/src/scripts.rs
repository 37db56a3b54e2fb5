//! The Lua scripts, kept as `.lua` files and called by SHA.

use redis::Script;

/// Every script the store runs. [`Script`] calls `EVALSHA` and loads the
/// script once on `NOSCRIPT` (after a server restart or `SCRIPT FLUSH`).
pub(crate) struct Scripts {
    pub create: Script,
    pub commit: Script,
    pub claim: Script,
    pub purge: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            create: Script::new(include_str!("lua/create.lua")),
            commit: Script::new(include_str!("lua/commit.lua")),
            claim: Script::new(include_str!("lua/claim.lua")),
            purge: Script::new(include_str!("lua/purge.lua")),
        }
    }

    pub fn all(&self) -> [&Script; 4] {
        [&self.create, &self.commit, &self.claim, &self.purge]
    }
}
