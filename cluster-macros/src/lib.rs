//! The `#[cluster::main]` attribute, re-exported by the `cluster` crate: use it as
//! `#[cluster::main]`, never from this crate directly (the generated code names `::cluster`).
//!
//! # Two styles
//!
//! **Functions.** The functions of the app go *inside* `main`, each marked with its role:
//!
//! ```ignore
//! #[cluster::main(count = 4, max_restarts = 5, max_restarts_interval = "15s", grace = 3000,
//!                 signals = [SIGINT, SIGTERM, SIGHUP])]
//! fn main() {
//!     #[cluster::master] // optional
//!     async fn master(ctx: cluster::MasterContext<Cmd, Report>) { println!("Master process running"); }
//!
//!     #[cluster::worker] // exactly one
//!     async fn worker(ctx: cluster::WorkerContext<Cmd, Report>) { ctx.shutdown_requested().await; }
//!
//!     #[cluster::before_fork] // optional
//!     async fn before_fork() -> Result<(), std::io::Error> { Ok(()) }
//! }
//! ```
//!
//! **Types.** An app that implements the `cluster::Master` and `cluster::Worker` traits names
//! values of them; `main`'s body holds nothing or items only:
//!
//! ```ignore
//! #[cluster::main(master = MyMaster, worker = MyWorker, count = 4)]
//! fn main() {}
//! ```
//!
//! `master` may be left out (the worker then runs with no master function); options given in
//! the attribute are applied after `Master::options()`, so the attribute wins.
//!
//! # Why the functions go inside `main`
//!
//! An attribute sees only the item it is on. If `#[cluster::main]` merely named functions
//! declared elsewhere (`worker = worker`), it could not read their signatures: a missing
//! context, a wrong return type or a master and worker that disagree on the message types
//! would surface as rustc trait-bound errors inside generated code, and the message types
//! `D` and `U` could not be read from the `WorkerContext<D, U>` parameter. With the
//! functions in `main`'s body the attribute sees all of them at once, so each of those
//! mistakes is a precise error on the token at fault, and the functions still resolve the
//! enclosing module's names (types, `use`s) as any nested item does. An annotated `mod`
//! would give the same view but needs `use super::*` and visibility changes; a body is
//! plainer. A `#[cluster::worker]` found outside `main` is reported with how to move it.
//!
//! # `main`'s body
//!
//! The generated `main` dispatches on the process's role before anything else (through
//! `Cluster::run`): started by hand it is the master, re-executed it is a worker. A statement
//! in `main` would run in every worker before that dispatch, so the body may contain only
//! items; set-up that belongs to the master goes in the `#[cluster::before_fork]` function
//! (or `Master::before_fork`). `main` itself must not be `async`, take parameters or declare
//! a return type: the generated one returns the cluster's `std::process::ExitCode`.
//!
//! # Arguments
//!
//! ```text
//! #[cluster::main(option = value, ...)]
//!
//! <any option of cluster::Options>   count = 4 | cpus, grace = "3s" | 3000, signals = [INT, "TERM"],
//!                                    balance = "round-robin" | RoundRobin, max_memory = "512MiB", ...
//! runtime = "multi_thread" | "current_thread"     the workers' tokio runtime
//! worker  = <expr: impl cluster::Worker>          an app written as types
//! master  = <expr: impl cluster::Master>          (with worker)
//! crate   = "::path::to::cluster"                 where the cluster crate is
//! ```
//!
//! The options are the entries of cluster-core's options table (`cluster::options::OPTIONS`,
//! listed with their defaults and accepted values in the README's "Options" table): every
//! entry is a key here, its value checked at compile time by the parser and the rule the
//! master applies at start-up, and set through `Cluster::configure` with the entry's builder
//! method. A value is written as the table's text, in Rust syntax: a number or `true`/`false`
//! bare (a number in quotes is refused, so that `max_memory = "512"` is not read as bytes
//! when MiB were meant), a name bare or as a string (`cpus`, `RoundRobin`, `"round-robin"`,
//! `"off"`), a list in brackets (`[SIGINT, "TERM"]`), anything else as a string (`"3s"`,
//! `"512MiB"`, `"127.0.0.1:8001"`). Options given here are applied after
//! `Master::options()`, so the attribute wins.
//!
//! Each mistake is a compile error on the token at fault, with the message the master would
//! print: an unknown or repeated option, a value the option's parser or rule refuses (a zero
//! count, a bad duration, an `accept_coalescing` over 100 ms, an unknown balance strategy, a
//! bad memory size or unit, a `status_addr` that is not an IP address and port, an unknown
//! signal or one that cannot be caught, a signal listed twice), each bad item of a list on
//! that item; a `heartbeat_timeout` not longer than the `heartbeat_interval` written beside
//! it; a signal in both `signals` and `reload_signals` (reported in the list written second);
//! a missing or second worker, a hook that is not `async`, takes the wrong parameters or
//! returns something other than `()` / `Result<(), E>`, and master and worker contexts whose
//! message types differ. Message types are compared as written: the macro cannot resolve
//! paths, so spell them the same way in both (a type alias helps).

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
mod app;
mod args;
mod expand;

use proc_macro::TokenStream;

/// Turns `fn main` into the entry point of a cluster: see the [crate documentation](crate)
/// for the two styles and the arguments.
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::main(args.into(), item.into()).into()
}

/// Marks the worker function inside `#[cluster::main] fn main() { ... }`: an
/// `async fn(ctx: cluster::WorkerContext<D, U>)` returning `()` or `Result<(), E>`. The
/// context may be left out.
///
/// `#[cluster::main]` consumes this marker; expanded on its own it only reports that the
/// function is not in `main`'s body.
#[proc_macro_attribute]
pub fn worker(args: TokenStream, item: TokenStream) -> TokenStream {
    misplaced("worker", args, item)
}

/// Marks the master function inside `#[cluster::main] fn main() { ... }`: an
/// `async fn(ctx: cluster::MasterContext<D, U>)` returning `()` or `Result<(), E>`, run in the
/// master alongside supervision. Optional; the context may be left out.
#[proc_macro_attribute]
pub fn master(args: TokenStream, item: TokenStream) -> TokenStream {
    misplaced("master", args, item)
}

/// Marks the function run once in the master before the first worker is spawned, inside
/// `#[cluster::main] fn main() { ... }`: an `async fn()` returning `()` or `Result<(), E>`;
/// an error stops the master. Optional.
#[proc_macro_attribute]
pub fn before_fork(args: TokenStream, item: TokenStream) -> TokenStream {
    misplaced("before_fork", args, item)
}

/// A marker reached on its own was not inside a `#[cluster::main]` body (which would have
/// removed it): keep the item so the rest of the crate resolves, and say where it belongs.
fn misplaced(name: &str, args: TokenStream, item: TokenStream) -> TokenStream {
    let _ = args;
    let mut tokens = proc_macro2::TokenStream::from(item);
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        format!(
            "`#[cluster::{name}]` marks a function inside the body of `#[cluster::main] fn main() {{ ... }}`: move this function into `main`"
        ),
    );
    tokens.extend(error.into_compile_error());
    tokens.into()
}
