// The token is checked at compile time, and the error does not quote it: a space and a
// quote cannot be in a bearer token.
#[cluster::main(status_token = "not a token")]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(status_token = "quo\"te")]
fn quote() {
    #[cluster::worker]
    async fn worker() {}
}
