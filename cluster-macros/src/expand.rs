//! `main` generated from the checked options and functions.

use std::net::SocketAddr;

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{ToTokens as _, quote, quote_spanned};
use syn::{ItemFn, LitBool};

use crate::app::{self, App, Messages};
use crate::args::{Args, Count, Errors, RawArgs, Runtime, Spanned};

/// The whole of `#[cluster::main]`: on any error, the user's item (markers removed) and the
/// errors, as tokio does, so that the rest of the crate still resolves and IDEs keep working.
pub(crate) fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let raw = match syn::parse2::<RawArgs>(args) {
        Ok(raw) => Some(raw),
        Err(e) => {
            errors.push(e);
            None
        }
    };
    let mut input: ItemFn = match syn::parse2(item.clone()) {
        Ok(input) => input,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                format!("`#[cluster::main]` goes on `fn main() {{ ... }}`: {e}"),
            );
            return with_error(item, e);
        }
    };
    let args = raw
        .map(|raw| Args::from_raw(raw, &mut errors))
        .unwrap_or_default();
    let krate = args.krate.clone();
    app::check_main_signature(&input.sig, &mut errors);
    let app = app::analyze(&input.block, krate.as_ref(), &mut errors);
    let build = build(&args, &app, &mut errors);
    if let Err(e) = errors.finish() {
        app::strip_markers(&mut input.block, krate.as_ref());
        // What was wrong with the signature is reported above; rustc's own errors on an
        // async or returning `main` would only repeat it.
        input.sig.asyncness = None;
        input.sig.output = syn::ReturnType::Default;
        input.sig.inputs.clear();
        input.sig.generics = syn::Generics::default();
        // The body is never run as it stands; its functions are only unused because of the error.
        return with_error(quote!(#[allow(unused)] #input), e);
    }
    let options = option_calls(&args);
    let ItemFn {
        attrs, vis, sig, ..
    } = &input;
    let ident = &sig.ident;
    let items = &app.items;
    quote! {
        #(#attrs)*
        #vis fn #ident() -> ::std::process::ExitCode {
            #(#items)*
            #build
                #(#options)*
                .run()
        }
    }
}

fn with_error(item: TokenStream, e: syn::Error) -> TokenStream {
    let mut tokens = item;
    tokens.extend(e.into_compile_error());
    tokens
}

fn crate_path(args: &Args) -> TokenStream {
    match &args.krate {
        Some(path) => quote!(#path),
        None => quote!(::cluster),
    }
}

/// The builder up to the options: `Cluster::from_app(...)` for an app written as types,
/// `Cluster::<D, U>::new().worker(...)...` for one written as functions.
fn build(args: &Args, app: &App, errors: &mut Errors) -> TokenStream {
    let krate = crate_path(args);
    let as_types = args.worker.is_some() || args.master.is_some();
    if as_types {
        if let Some(attr) = &app.first_marker {
            errors.push(syn::Error::new_spanned(
                attr,
                "this `main` names an app written as types (`worker = ...`/`master = ...`): mark no functions in it, or remove those options and mark functions only",
            ));
        }
        return match (&args.worker, &args.master) {
            (Some((_, worker)), Some((_, master))) => quote! {
                #krate::Cluster::from_app(#master, #worker)
            },
            (Some((key, worker)), None) => {
                let span = key.span();
                // Without a master there is no `from_app`; the worker value is shared by
                // reference between the worker function's calls, as `from_app` does.
                quote_spanned! {span=>
                    {
                        let __cluster_worker = ::std::sync::Arc::new(#worker);
                        #krate::Cluster::new().worker(move |__cluster_ctx| {
                            let __cluster_worker = ::std::sync::Arc::clone(&__cluster_worker);
                            async move { #krate::Worker::run(&*__cluster_worker, __cluster_ctx).await }
                        })
                    }
                }
            }
            (None, Some((key, _))) => {
                errors.push(syn::Error::new(
                    key.span(),
                    "an app written as types needs `worker = <a value implementing cluster::Worker>` as well",
                ));
                TokenStream::new()
            }
            (None, None) => TokenStream::new(),
        };
    }
    let Some(worker) = &app.worker else {
        if app.worker_marked {
            return TokenStream::new();
        }
        errors.push(syn::Error::new(
            Span::call_site(),
            "no worker: mark one `async fn` in the body of `main` with `#[cluster::worker]`, or name a value implementing `cluster::Worker` with `worker = ...`",
        ));
        return TokenStream::new();
    };
    let messages: Option<&Messages> = worker
        .messages
        .as_ref()
        .or_else(|| app.master.as_ref().and_then(|m| m.messages.as_ref()));
    let (down, up) = match messages {
        Some(m) => (m.down_tokens(), m.up_tokens()),
        None => (quote!(()), quote!(())),
    };
    let mut calls = Vec::new();
    let w = &worker.ident;
    calls.push(if worker.takes_context {
        quote_spanned!(w.span()=> .worker(#w))
    } else {
        quote_spanned!(w.span()=> .worker(|_| #w()))
    });
    if let Some(master) = &app.master {
        let m = &master.ident;
        calls.push(if master.takes_context {
            quote_spanned!(m.span()=> .master(#m))
        } else {
            quote_spanned!(m.span()=> .master(|_| #m()))
        });
    }
    if let Some(hook) = &app.before_fork {
        let b = &hook.ident;
        calls.push(quote_spanned!(b.span()=> .before_fork(#b)));
    }
    quote! {
        #krate::Cluster::<#down, #up>::new() #(#calls)*
    }
}

fn option_calls(args: &Args) -> Vec<TokenStream> {
    let krate = crate_path(args);
    let mut calls = Vec::new();
    if let Some(count) = &args.count {
        calls.push(match count.value {
            Count::Fixed(n) => {
                let n = spanned_lit(Literal::usize_unsuffixed(n), count.span);
                quote_spanned!(count.span=> .count(#n))
            }
            Count::Cpus => quote_spanned!(count.span=> .count_cpus()),
        });
    }
    if let Some(max) = &args.max_restarts {
        let n = spanned_lit(Literal::u32_unsuffixed(max.value), max.span);
        calls.push(quote_spanned!(max.span=> .max_restarts(#n)));
    }
    if let Some(interval) = &args.max_restarts_interval {
        let ms = spanned_lit(Literal::u64_unsuffixed(interval.value), interval.span);
        calls.push(quote_spanned!(interval.span=> .max_restarts_interval_ms(#ms)));
    }
    if let Some(grace) = &args.grace {
        let ms = spanned_lit(Literal::u64_unsuffixed(grace.value), grace.span);
        calls.push(quote_spanned!(grace.span=> .grace_ms(#ms)));
    }
    if let Some(signals) = &args.signals {
        let names = &signals.value;
        calls.push(quote_spanned!(signals.span=> .signals([#(#krate::Signal::#names),*])));
    }
    if let Some(runtime) = &args.runtime {
        let variant = match runtime.value {
            Runtime::MultiThread => quote!(MultiThread),
            Runtime::CurrentThread => quote!(CurrentThread),
        };
        calls.push(quote_spanned!(runtime.span=> .worker_runtime(#krate::Runtime::#variant)));
    }
    // The options below have no shortcut on `Cluster`: each is set through `configure`,
    // one call per option so that rustc's errors on a call land on its value.
    if let Some(balance) = &args.balance {
        let variant = Ident::new(balance.value.variant(), balance.span);
        calls.push(configure(
            balance,
            quote_spanned!(balance.span=> balance(#krate::Balance::#variant)),
        ));
    }
    if let Some(window) = &args.accept_coalescing {
        let value = millis(window.value, window.span);
        calls.push(configure(
            window,
            quote_spanned!(window.span=> accept_coalescing(#value)),
        ));
    }
    if let Some(signals) = &args.reload_signals {
        let names = &signals.value;
        calls.push(configure(
            signals,
            quote_spanned!(signals.span=> reload_signals([#(#krate::Signal::#names),*])),
        ));
    }
    if let Some(n) = &args.reload_parallelism {
        let lit = spanned_lit(Literal::usize_unsuffixed(n.value), n.span);
        calls.push(configure(
            n,
            quote_spanned!(n.span=> reload_parallelism(#lit)),
        ));
    }
    for (setter, duration) in [
        ("ready_timeout", &args.ready_timeout),
        ("heartbeat_interval", &args.heartbeat_interval),
        ("sample_interval", &args.sample_interval),
    ] {
        if let Some(ms) = duration {
            let setter = Ident::new(setter, ms.span);
            let value = millis(ms.value, ms.span);
            calls.push(configure(ms, quote_spanned!(ms.span=> #setter(#value))));
        }
    }
    if let Some(timeout) = &args.heartbeat_timeout {
        let value = optional(
            timeout.value.map(|ms| millis(ms, timeout.span)),
            timeout.span,
        );
        calls.push(configure(
            timeout,
            quote_spanned!(timeout.span=> heartbeat_timeout(#value)),
        ));
    }
    if let Some(bytes) = &args.max_memory {
        let value = optional(
            bytes
                .value
                .map(|n| spanned_lit(Literal::u64_unsuffixed(n), bytes.span).into_token_stream()),
            bytes.span,
        );
        calls.push(configure(
            bytes,
            quote_spanned!(bytes.span=> max_memory(#value)),
        ));
    }
    if let Some(n) = &args.memory_samples {
        let lit = spanned_lit(Literal::u32_unsuffixed(n.value), n.span);
        calls.push(configure(n, quote_spanned!(n.span=> memory_samples(#lit))));
    }
    if let Some(addr) = &args.status_addr {
        let value = optional(addr.value.map(|a| socket_addr(a, addr.span)), addr.span);
        calls.push(configure(
            addr,
            quote_spanned!(addr.span=> status_addr(#value)),
        ));
    }
    if let Some(n) = &args.min_ready {
        let lit = spanned_lit(Literal::usize_unsuffixed(n.value), n.span);
        calls.push(configure(n, quote_spanned!(n.span=> min_ready(#lit))));
    }
    if let Some(prefix) = &args.worker_prefix_logs {
        let value = LitBool::new(prefix.value, prefix.span);
        calls.push(configure(
            prefix,
            quote_spanned!(prefix.span=> worker_prefix_logs(#value)),
        ));
    }
    calls
}

/// `.configure(|o| o.<call>)`: how an option without a builder shortcut is set.
fn configure<T>(option: &Spanned<T>, call: TokenStream) -> TokenStream {
    quote_spanned!(option.span=> .configure(|__cluster_options| __cluster_options.#call))
}

fn millis(ms: u64, span: Span) -> TokenStream {
    let ms = spanned_lit(Literal::u64_unsuffixed(ms), span);
    quote_spanned!(span=> ::std::time::Duration::from_millis(#ms))
}

fn optional(value: Option<TokenStream>, span: Span) -> TokenStream {
    match value {
        Some(value) => quote_spanned!(span=> ::std::option::Option::Some(#value)),
        None => quote_spanned!(span=> ::std::option::Option::None),
    }
}

/// The address as constructor calls: it was parsed at compile time, so the generated code
/// has nothing left to parse (and nothing to unwrap).
fn socket_addr(addr: SocketAddr, span: Span) -> TokenStream {
    let port = spanned_lit(Literal::u16_unsuffixed(addr.port()), span);
    match addr {
        SocketAddr::V4(v4) => {
            let octets = v4
                .ip()
                .octets()
                .map(|o| spanned_lit(Literal::u8_unsuffixed(o), span));
            quote_spanned! {span=>
                ::std::net::SocketAddr::V4(::std::net::SocketAddrV4::new(
                    ::std::net::Ipv4Addr::new(#(#octets),*),
                    #port,
                ))
            }
        }
        SocketAddr::V6(v6) => {
            let segments = v6
                .ip()
                .segments()
                .map(|s| spanned_lit(Literal::u16_unsuffixed(s), span));
            let flowinfo = spanned_lit(Literal::u32_unsuffixed(v6.flowinfo()), span);
            let scope_id = spanned_lit(Literal::u32_unsuffixed(v6.scope_id()), span);
            quote_spanned! {span=>
                ::std::net::SocketAddr::V6(::std::net::SocketAddrV6::new(
                    ::std::net::Ipv6Addr::new(#(#segments),*),
                    #port,
                    #flowinfo,
                    #scope_id,
                ))
            }
        }
    }
}

fn spanned_lit(mut lit: Literal, span: Span) -> Literal {
    lit.set_span(span);
    lit
}
