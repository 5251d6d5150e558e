// An app written as types needs a worker as well as a master.
struct Boss;

#[cluster::main(master = Boss)]
fn main() {}
