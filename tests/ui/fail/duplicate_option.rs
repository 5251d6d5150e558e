// The second `count` is the one reported.
#[cluster::main(count = 2, grace = 3000, count = 4)]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

// An app written as types has one worker.
struct A;
struct B;

#[cluster::main(worker = A, worker = B)]
fn other() {}
