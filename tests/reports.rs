//! Reports: atomic writes, sanitised names, the index, concurrent writers,
//! crash safety, and plugins writing reports through the capability.

mod common;

use std::sync::Arc;

use bsm_platform::reports::{ReportError, ReportStore};
use bsm_runtime::api::{AgentRequest, RunContext};
use bsm_runtime::capabilities::Capabilities;
use bsm_runtime::capabilities::reports::ReportSink;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_all_land_whole_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReportStore::open(dir.path()).unwrap();
    let writers: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let body = format!("# Report {i}\n{}", "line\n".repeat(i * 50));
                store
                    .write(
                        "code-review-agent",
                        &format!("job-{i}"),
                        &format!("review-{i}"),
                        &body,
                    )
                    .await
                    .map(|r| (r, body))
            })
        })
        .collect();
    let mut written = Vec::new();
    for w in writers {
        written.push(w.await.unwrap().unwrap());
    }
    let listed = store.list().await;
    assert_eq!(listed.len(), 64);
    for (record, body) in written {
        let (indexed, text) = store.get(&record.id).await.expect("indexed");
        assert_eq!(indexed, record);
        assert_eq!(text, body, "report {} is whole", record.name);
        assert_eq!(record.bytes, body.len() as u64);
        assert_eq!(record.plugin, "code-review-agent");
    }
}

#[tokio::test]
async fn traversal_attempts_are_rejected_and_nothing_is_written_outside() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    let store = ReportStore::open(&reports).unwrap();
    for name in [
        "../escape",
        "../../etc/passwd",
        "/tmp/abs",
        "a/../../b",
        "..",
        ".env",
        "x\0y",
    ] {
        let err = store.write("p", "j", name, "x").await.unwrap_err();
        assert!(
            matches!(err, ReportError::InvalidName { .. }),
            "{name:?}: {err:?}"
        );
    }
    let outside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("reports")]);
    assert!(store.list().await.is_empty());
}

#[tokio::test]
async fn a_crash_before_the_rename_leaves_no_report_and_no_litter() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = ReportStore::open(dir.path()).unwrap();
        store.write("p", "job-1", "kept", "# kept").await.unwrap();
    }
    // What a crash mid-write leaves: a temporary file that was never renamed,
    // and possibly a torn last line in the index.
    std::fs::write(dir.path().join("p/.tmp-0123abcd"), "# half a rep").unwrap();
    let mut index = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("index.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut index, b"{\"id\":\"torn\",\"plu").unwrap();

    let store = ReportStore::open(dir.path()).unwrap();
    let listed = store.list().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "kept.md");
    assert!(
        !dir.path().join("p/.tmp-0123abcd").exists(),
        "the leftover temporary file is removed at open"
    );
    let files: Vec<_> = std::fs::read_dir(dir.path().join("p"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].ends_with("-kept.md"));
}

async fn reporter_runtime(store: Option<Arc<ReportStore>>) -> bsm_runtime::Runtime {
    let runtime = runtime_with(Capabilities {
        reports: store.map(|s| s as Arc<dyn ReportSink>),
        ..Capabilities::default()
    });
    let plugin = runtime
        .load_plugin(&test_plugins_dir().join("reporter.toml"))
        .await
        .unwrap();
    runtime.registry().install(plugin);
    runtime
}

fn report_request(text: &str, name: &str) -> AgentRequest {
    let mut context = RunContext::new("ci");
    context.correlation_id = "job-99".into();
    AgentRequest {
        input: text.into(),
        payload: json!({ "name": name }),
        context,
    }
}

#[tokio::test]
async fn a_plugin_writes_a_report_under_its_id_and_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReportStore::open(dir.path()).unwrap();
    let runtime = reporter_runtime(Some(store.clone())).await;
    let run = runtime
        .run_agent("reporter", report_request("# PR 7\nAll good.", "pr-7"))
        .await
        .unwrap();
    assert!(
        run.output.text.starts_with("analysis done; wrote "),
        "{}",
        run.output.text
    );
    let records = store.list().await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        (
            records[0].plugin.as_str(),
            records[0].job.as_str(),
            records[0].name.as_str()
        ),
        ("reporter", "job-99", "pr-7.md")
    );
    assert_eq!(
        store.get(&records[0].id).await.unwrap().1,
        "# PR 7\nAll good."
    );

    let run = runtime
        .run_agent("reporter", report_request("x", "../../escape"))
        .await
        .unwrap();
    assert!(
        run.output
            .text
            .contains("report failed: Error::InvalidName"),
        "{}",
        run.output.text
    );
}

#[tokio::test]
async fn an_unwritable_report_directory_fails_the_write_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReportStore::open(dir.path().join("reports")).unwrap();
    // The plugin's subdirectory cannot be created: a file is in its way
    // (the tests run as root, so permissions alone would not stop a write).
    std::fs::write(dir.path().join("reports/reporter"), "not a directory").unwrap();
    let runtime = reporter_runtime(Some(store)).await;
    let run = runtime
        .run_agent("reporter", report_request("# x", "r"))
        .await
        .unwrap();
    assert!(
        run.output
            .text
            .starts_with("analysis done; report failed: Error::Storage"),
        "{}",
        run.output.text
    );
    assert!(
        run.output
            .text
            .contains("cannot create the report directory"),
        "{}",
        run.output.text
    );

    let runtime = reporter_runtime(None).await;
    let run = runtime
        .run_agent("reporter", report_request("# x", "r"))
        .await
        .unwrap();
    assert!(
        run.output.text.contains("Unavailable"),
        "{}",
        run.output.text
    );
}

#[test]
fn a_report_directory_that_cannot_be_created_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    match ReportStore::open(file.join("reports")) {
        Err(ReportError::Storage(m)) => {
            assert!(m.contains("cannot create the report directory"), "{m}")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}
