//! Stampede-safe caching: single-flight loads, errors not cached,
//! stale-while-revalidate, and the plugin-facing cache through real plugins.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bsm_cache::{LoadingCache, SwrCache, SwrTtl};
use bsm_runtime::capabilities::Capabilities;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_cold_reads_of_one_key_cause_exactly_one_load() {
    let cache = Arc::new(LoadingCache::<String, Arc<String>>::new("test", 100, None));
    let loads = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(1000));
    let readers: Vec<_> = (0..1000)
        .map(|_| {
            let (cache, loads, start) = (cache.clone(), loads.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                cache
                    .get_or_load("agents".to_string(), || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, std::io::Error>(Arc::new("registry".to_string()))
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    for r in readers {
        assert_eq!(*r.await.unwrap(), "registry");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let s = cache.stats();
    assert_eq!(s.loads, 1);
    assert_eq!(s.misses + s.coalesced + s.hits, 1000);
    assert!(s.coalesced > 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_reaches_every_waiter_and_is_not_cached() {
    let cache = Arc::new(LoadingCache::<&'static str, u32>::new("test", 100, None));
    let attempts = Arc::new(AtomicUsize::new(0));
    let load = |attempts: Arc<AtomicUsize>| async move {
        let n = attempts.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        if n == 0 {
            Err(format!("disk on fire (attempt {n})"))
        } else {
            Ok(7)
        }
    };
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let (cache, attempts) = (cache.clone(), attempts.clone());
            tokio::spawn(async move { cache.get_or_load("k", || load(attempts)).await })
        })
        .collect();
    for w in waiters {
        let err = w.await.unwrap().unwrap_err();
        assert_eq!(*err, "disk on fire (attempt 0)");
    }
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "one load for the whole herd"
    );
    assert_eq!(
        cache
            .get_or_load("k", || load(attempts.clone()))
            .await
            .unwrap(),
        7,
        "the error was not cached"
    );
    assert_eq!(cache.stats().load_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_stale_value_is_served_while_exactly_one_refresh_runs() {
    let version = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let loader = {
        let (version, gate) = (version.clone(), gate.clone());
        Arc::new(
            move |_key: String| -> futures_util::future::BoxFuture<'static, anyhow::Result<usize>> {
                let (version, gate) = (version.clone(), gate.clone());
                Box::pin(async move {
                    let v = version.fetch_add(1, Ordering::SeqCst) + 1;
                    if v > 1 {
                        // Refreshes wait until the test lets them finish.
                        gate.acquire().await.unwrap().forget();
                    }
                    Ok(v)
                })
            },
        )
    };
    let ttl = SwrTtl {
        soft: Duration::from_secs(10),
        hard: Duration::from_secs(3600),
    };
    let cache = SwrCache::new("swr", 10, ttl, loader);
    assert_eq!(cache.get("k".into()).await.unwrap(), 1);

    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..100 {
        assert_eq!(
            cache.get("k".into()).await.unwrap(),
            1,
            "stale value served without waiting"
        );
    }
    tokio::task::yield_now().await;
    assert_eq!(cache.refreshing(), 1);
    assert_eq!(
        version.load(Ordering::SeqCst),
        2,
        "exactly one refresh started for 100 stale reads"
    );
    gate.add_permits(1);
    while cache.refreshing() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        cache.get("k".into()).await.unwrap(),
        2,
        "the refreshed value replaced the stale one"
    );
    let s = cache.stats();
    assert_eq!((s.stale_served, s.refreshes, s.loads), (100, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_old_value() {
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = {
        let calls = calls.clone();
        Arc::new(move |_key: u8| -> futures_util::future::BoxFuture<'static, anyhow::Result<&'static str>> {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { if n == 0 { Ok("good") } else { anyhow::bail!("source down") } })
        })
    };
    let cache = SwrCache::new(
        "swr",
        10,
        SwrTtl {
            soft: Duration::from_secs(1),
            hard: Duration::from_secs(3600),
        },
        loader,
    );
    assert_eq!(cache.get(1).await.unwrap(), "good");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(cache.get(1).await.unwrap(), "good");
    while cache.refreshing() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        cache.get(1).await.unwrap(),
        "good",
        "still the old value after a failed refresh"
    );
    assert!(cache.stats().refresh_failures >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_one_plugin_compile_it_once() {
    let runtime = Arc::new(runtime_with(Capabilities::default()));
    let dir = tempfile::tempdir().unwrap();
    let manifest = plugin_with_manifest(
        dir.path(),
        &test_plugins_dir().join("counter.wasm"),
        "id = \"counter-copy\"\nversion = \"1\"\nkind = \"agent\"\n",
    );
    let loads: Vec<_> = (0..20)
        .map(|_| {
            let (runtime, manifest) = (runtime.clone(), manifest.clone());
            tokio::spawn(async move {
                runtime
                    .load_plugin(&manifest)
                    .await
                    .map(|p| p.digest.clone())
            })
        })
        .collect();
    for l in loads {
        l.await.unwrap().unwrap();
    }
    let stats: std::collections::HashMap<_, _> = runtime.cache_stats().into_iter().collect();
    assert_eq!(stats["components"].loads, 1, "{:?}", stats["components"]);
    assert_eq!(stats["manifests"].loads, 1, "{:?}", stats["manifests"]);
}

async fn run_text(runtime: &bsm_runtime::Runtime, id: &str, input: &str) -> String {
    runtime
        .run_agent(id, request(input))
        .await
        .unwrap()
        .output
        .text
}

#[tokio::test]
async fn the_plugin_cache_is_namespaced_per_plugin_and_outlives_runs() {
    let runtime = runtime_with(Capabilities::default());
    let dir = tempfile::tempdir().unwrap();
    for id in ["alice", "bob"] {
        let manifest = plugin_with_manifest(
            dir.path(),
            &test_plugins_dir().join("cache-user.wasm"),
            &format!(
                "id = \"{id}\"\nversion = \"1\"\nkind = \"agent\"\n[capabilities.cache]\nquota-bytes = 65536\n"
            ),
        );
        runtime
            .registry()
            .install(runtime.load_plugin(&manifest).await.unwrap());
    }
    assert_eq!(
        run_text(&runtime, "alice", "set color blue").await,
        "stored"
    );
    assert_eq!(
        run_text(&runtime, "bob", "get color").await,
        "miss",
        "bob cannot see alice's entry"
    );
    assert_eq!(run_text(&runtime, "bob", "set color red").await, "stored");
    assert_eq!(
        run_text(&runtime, "alice", "get color").await,
        "hit: blue",
        "the value outlived alice's run"
    );
    assert_eq!(run_text(&runtime, "bob", "get color").await, "hit: red");
    assert_eq!(run_text(&runtime, "alice", "del color").await, "deleted");
    assert_eq!(run_text(&runtime, "alice", "get color").await, "miss");

    assert_eq!(
        run_text(&runtime, "alice", "set short x 30").await,
        "stored"
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        run_text(&runtime, "alice", "get short").await,
        "miss",
        "expired after its own TTL"
    );

    let too_big = run_text(&runtime, "alice", &format!("big k {}", 2 << 20)).await;
    assert!(too_big.contains("TooLarge(2097152)"), "{too_big}");
    let stats = runtime.capabilities().cache.stats();
    assert_eq!((stats.hits, stats.misses), (2, 3), "{stats:?}");
}
