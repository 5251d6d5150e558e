// Sizes with an unknown unit, a fraction, no unit in a string, zero bytes, a size beyond 64
// bits and a negative number: each reported on the value.
#[cluster::main(max_memory = "512MiBs")]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(max_memory = "1.5GiB")]
fn fraction() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(max_memory = "512")]
fn no_unit() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(max_memory = 0)]
fn zero() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(max_memory = "99999999TiB")]
fn too_big() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(max_memory = -1)]
fn negative() {
    #[cluster::worker]
    async fn worker() {}
}
