//! API keys and admin listeners for tests of the admin surface (`tests/admin.rs`,
//! `tests/metrics.rs`, `tests/dashboard.rs`).

use std::path::{Path, PathBuf};

use super::{run_astramq, T};

/// `astramq ctl key add NAME --scope SCOPE --file FILE`: the key it prints.
pub async fn add_key(file: &Path, name: &str, scope: &str) -> String {
    let out = run_astramq(
        &[
            "ctl",
            "key",
            "add",
            name,
            "--scope",
            scope,
            "--file",
            file.to_str().unwrap(),
        ],
        &[],
        T,
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let key = out.stdout.trim().to_string();
    assert!(key.starts_with(&format!("{name}.")), "{out:?}");
    key
}

/// Where a test keeps its admin key file.
pub fn keys_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("admin-keys")
}

/// The flags of an admin listener on a free port with the keys in `file`.
pub fn admin_args(file: &Path) -> [&str; 4] {
    [
        "--health-listen",
        "127.0.0.1:0",
        "--admin-keys-file",
        file.to_str().unwrap(),
    ]
}
