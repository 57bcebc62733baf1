//! Cache costs: the hit path (ours against a bare moka lookup), and a
//! 1,000-way stampede on a cold key: how many loads ran, and how long the
//! herd waited (p50/p99) relative to one load's time.
//!
//! Run: `cargo bench -p bsm-cli --bench caching`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bsm_cache::LoadingCache;
use criterion::Criterion;

fn hit_path(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let ours = LoadingCache::<u64, Arc<String>>::new("bench", 1000, None);
    let bare: moka::future::Cache<u64, Arc<String>> = moka::future::Cache::new(1000);
    rt.block_on(async {
        ours.get_or_load(1, || async { Ok::<_, ()>(Arc::new("v".to_string())) })
            .await
            .unwrap();
        bare.insert(1, Arc::new("v".to_string())).await;
    });
    let mut group = c.benchmark_group("cache hit");
    group.bench_function("bare moka get", |b| {
        b.to_async(rt)
            .iter(|| async { bare.get(&1).await.unwrap() })
    });
    group.bench_function("LoadingCache::get_or_load (hit)", |b| {
        b.to_async(rt).iter(|| async {
            ours.get_or_load(1, || async { Ok::<_, ()>(Arc::new(String::new())) })
                .await
                .unwrap()
        })
    });
    group.finish();
}

/// One stampede: `herd` tasks read one cold key at once; the load takes `load_time`.
async fn stampede(herd: usize, load_time: Duration) -> (usize, Vec<Duration>) {
    let cache = Arc::new(LoadingCache::<&'static str, u64>::new("stampede", 10, None));
    let loads = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(herd));
    let tasks: Vec<_> = (0..herd)
        .map(|_| {
            let (cache, loads, start) = (cache.clone(), loads.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let t = Instant::now();
                cache
                    .get_or_load("key", || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(load_time).await;
                        Ok::<_, ()>(42)
                    })
                    .await
                    .unwrap();
                t.elapsed()
            })
        })
        .collect();
    let mut waits = Vec::with_capacity(herd);
    for t in tasks {
        waits.push(t.await.unwrap());
    }
    (loads.load(Ordering::SeqCst), waits)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default().configure_from_args();
    hit_path(&mut c, &rt);
    c.final_summary();

    let load_time = Duration::from_millis(20);
    let rounds = 20;
    let mut all = Vec::new();
    let mut total_loads = 0;
    for _ in 0..rounds {
        let (loads, waits) = rt.block_on(stampede(1000, load_time));
        total_loads += loads;
        all.extend(waits);
    }
    all.sort();
    let (p50, p99, max) = (
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        *all.last().unwrap(),
    );
    println!("\n1,000-way stampede on a cold key ({rounds} rounds, one load = {load_time:?}):");
    println!(
        "  loads per stampede: {:.2}",
        total_loads as f64 / rounds as f64
    );
    println!(
        "  herd wait p50 {:.2} ms ({:.2}x one load), p99 {:.2} ms ({:.2}x), max {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p50.as_secs_f64() / load_time.as_secs_f64(),
        p99.as_secs_f64() * 1e3,
        p99.as_secs_f64() / load_time.as_secs_f64(),
        max.as_secs_f64() * 1e3,
    );
}
