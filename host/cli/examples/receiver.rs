//! The fake GitHub / webhook receiver of the end-to-end tests, as a
//! process, for the outbox benchmark: prints its base URL on stdout and
//! answers every `POST /hooks/...` with 204.

#[path = "../../../tests/common/fake_github.rs"]
mod fake_github;

#[tokio::main]
async fn main() {
    let fake = fake_github::FakeGitHub::start().await;
    println!("{}", fake.url);
    let _ = tokio::signal::ctrl_c().await;
}
