//! `main` generated from the checked options and functions.

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::ItemFn;

use crate::app::{self, App, Messages};
use crate::args::{Args, Errors, RawArgs, Runtime};

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
    let options = option_calls(&args, &mut errors);
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

fn option_calls(args: &Args, errors: &mut Errors) -> Vec<TokenStream> {
    let krate = crate_path(args);
    let mut calls = Vec::new();
    if let Some(runtime) = &args.runtime {
        let variant = match runtime.value {
            Runtime::MultiThread => quote!(MultiThread),
            Runtime::CurrentThread => quote!(CurrentThread),
        };
        calls.push(quote_spanned!(runtime.span=> .worker_runtime(#krate::Runtime::#variant)));
    }
    // Each option through `configure` with the table's setter, one call per option so that
    // rustc's errors on a call land on its value.
    let krate_text = krate.to_string();
    for option in &args.options {
        let span = option.span;
        let text = option.expr.replace("$crate", &krate_text);
        let Some(value) = errors.check(text.parse::<TokenStream>().map_err(|e| {
            syn::Error::new(
                span,
                format!("cluster-macros wrote an invalid expression {text:?}: {e}"),
            )
        })) else {
            continue;
        };
        let value = respan(value, span);
        let setter = Ident::new(option.spec.setter(), span);
        calls.push(quote_spanned! {span=>
            .configure(|__cluster_options| __cluster_options.#setter(#value))
        });
    }
    calls
}

/// The tokens with the span of what the user wrote, for rustc's errors.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}
