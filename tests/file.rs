//! File discovery against real files in a temporary directory.

use std::{fs, net::SocketAddr, path::Path, time::Duration};

use tower_lb::{discover::file::FileSource, Balance};

use crate::support::{addr_balance, backend_table as table, eventually, AddrSvc};

type Svc = AddrSvc;

fn balance() -> Balance<SocketAddr, Svc> {
    addr_balance()
}

fn toml(backends: &[(&str, u32, bool)]) -> String {
    backends
        .iter()
        .map(|(a, w, b)| format!("[[backend]]\naddress = \"{a}\"\nweight = {w}\nbackup = {b}\n\n"))
        .collect()
}

fn row(a: &str, w: u32, b: bool) -> (String, u32, bool) {
    (a.to_owned(), w, b)
}

/// Writes a temporary file and renames it over `path`, as editors do.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// A source that relies on events: polling is too slow to pass these tests.
fn watched(path: &Path) -> FileSource {
    FileSource::new(path)
        .debounce(Duration::from_millis(50))
        .poll_interval(Duration::from_secs(3600))
}

#[tokio::test]
async fn reloads_after_an_atomic_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backends.toml");
    fs::write(&path, toml(&[("127.0.0.1:1", 1, false)])).unwrap();
    let b = balance();
    let _guard = watched(&path).spawn(b.handle()).unwrap();
    assert!(eventually(10, || table(&b) == [row("127.0.0.1:1", 1, false)]).await);

    save_by_rename(
        &path,
        &toml(&[("127.0.0.1:1", 4, false), ("127.0.0.1:2", 1, true)]),
    );
    let want = [row("127.0.0.1:1", 4, false), row("127.0.0.1:2", 1, true)];
    assert!(
        eventually(10, || table(&b) == want).await,
        "{:?}",
        table(&b)
    );

    // A second rename: the new inode is watched too (the directory is).
    save_by_rename(&path, &toml(&[("127.0.0.1:3", 1, false)]));
    assert!(eventually(10, || table(&b) == [row("127.0.0.1:3", 1, false)]).await);
}

#[tokio::test]
async fn a_partial_write_keeps_the_set_until_the_write_completes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backends.toml");
    fs::write(&path, toml(&[("127.0.0.1:1", 1, false)])).unwrap();
    let b = balance();
    let _guard = watched(&path).spawn(b.handle()).unwrap();
    assert!(eventually(10, || table(&b) == [row("127.0.0.1:1", 1, false)]).await);

    let full = toml(&[("127.0.0.1:1", 1, false), ("127.0.0.1:2", 2, false)]);
    // The writer stops in the middle of a value: invalid TOML.
    let cut = full.find("127.0.0.1:2").unwrap() + 6;
    fs::write(&path, &full[..cut]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(table(&b), [row("127.0.0.1:1", 1, false)]);

    fs::write(&path, &full).unwrap();
    let want = [row("127.0.0.1:1", 1, false), row("127.0.0.1:2", 2, false)];
    assert!(
        eventually(10, || table(&b) == want).await,
        "{:?}",
        table(&b)
    );
}

#[tokio::test]
async fn invalid_or_missing_files_keep_the_previous_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backends.json");
    fs::write(&path, r#"[{"address": "127.0.0.1:1"}]"#).unwrap();
    let b = balance();
    let _guard = watched(&path).spawn(b.handle()).unwrap();
    assert!(eventually(10, || table(&b) == [row("127.0.0.1:1", 1, false)]).await);

    for bad in [
        r#"[{"address": "127.0.0.1:1", "weight": 0}]"#,
        r#"[{"address": "not an address"}]"#,
        r#"{"backends": "#,
        "\u{0}\u{1}binary",
    ] {
        save_by_rename(&path, bad);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(table(&b), [row("127.0.0.1:1", 1, false)], "{bad}");
    }
    fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(table(&b), [row("127.0.0.1:1", 1, false)]);

    save_by_rename(
        &path,
        r#"{"backend": [{"address": "127.0.0.1:9", "backup": true}]}"#,
    );
    assert!(eventually(10, || table(&b) == [row("127.0.0.1:9", 1, true)]).await);
}

#[tokio::test]
async fn polling_alone_picks_up_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backends.toml");
    fs::write(&path, toml(&[("127.0.0.1:1", 1, false)])).unwrap();
    let b = balance();
    let guard = FileSource::new(&path)
        .watch(false)
        .poll_interval(Duration::from_millis(100))
        .spawn(b.handle())
        .unwrap();
    assert!(eventually(10, || table(&b) == [row("127.0.0.1:1", 1, false)]).await);
    save_by_rename(&path, &toml(&[("127.0.0.1:2", 1, false)]));
    assert!(eventually(10, || table(&b) == [row("127.0.0.1:2", 1, false)]).await);

    // Once the guard is gone, changes are no longer applied.
    drop(guard);
    save_by_rename(&path, &toml(&[("127.0.0.1:3", 1, false)]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(table(&b), [row("127.0.0.1:2", 1, false)]);
}
