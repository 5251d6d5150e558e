// `crate = "..."` for a renamed or re-exported cluster crate; the markers follow the path.
pub extern crate cluster as renamed;

mod inner {
    pub use renamed as reexported;
}

#[renamed::main(crate = "renamed", count = 1)]
fn app() {
    #[renamed::worker]
    async fn worker(_ctx: renamed::WorkerContext) {}
}

#[renamed::main(crate = "crate::inner::reexported")]
fn app2() {
    #[crate::inner::reexported::worker]
    async fn worker() {}
}

fn main() {
    let _: [fn() -> std::process::ExitCode; 2] = [app, app2];
}
