// The origin's layout, functions beside `main`: markers belong inside `#[cluster::main] fn main`.
#[cluster::worker]
async fn worker(_ctx: cluster::WorkerContext) {}

#[cluster::before_fork]
async fn before_fork() {}

fn main() {}
