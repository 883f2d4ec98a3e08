//! Attribute macros of `sandmill-sdk`.
//!
//! Each attribute keeps the user's function as it is and adds, for
//! `wasm32` only, a private module that generates the component bindings of
//! one world of `wit/sandmill.wit` (shipped inside this crate) and exports a glue type calling the
//! function. Off `wasm32` nothing is added, so the function can be tested
//! with plain `cargo test`. A wrong signature is a compile error pointing at
//! the user's code, never a panic in the macro.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, parse_macro_input};

/// One kind of guest function: its world, export and expected signature.
struct Kind {
    attr: &'static str,
    world: &'static str,
    interface: &'static str,
    export_fn: &'static str,
    arity: usize,
    signature: &'static str,
}

const MAP: Kind = Kind {
    attr: "map",
    world: "map-guest",
    interface: "mapper",
    export_fn: "map",
    arity: 3,
    signature: "fn(input: &[u8], ctx: &mut Context, out: &mut Emitter) -> Result<()>",
};
const COMBINE: Kind = Kind {
    attr: "combine",
    world: "combine-guest",
    interface: "combiner",
    export_fn: "combine",
    arity: 3,
    signature: "fn(key: &[u8], values: &mut Values, out: &mut Emitter) -> Result<()>",
};
const REDUCE: Kind = Kind {
    attr: "reduce",
    world: "reduce-guest",
    interface: "reducer",
    export_fn: "reduce",
    arity: 4,
    signature: "fn(key: &[u8], values: &mut Values, ctx: &mut Context, out: &mut Emitter) -> Result<()>",
};
const PREPROCESS: Kind = Kind {
    attr: "preprocess",
    world: "preprocess-guest",
    interface: "preprocessor",
    export_fn: "preprocess",
    arity: 2,
    signature: "fn(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>>",
};
const TASK: Kind = Kind {
    attr: "task",
    world: "task-guest",
    interface: "runner",
    export_fn: "run",
    arity: 2,
    signature: "fn(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>>",
};

/// Marks `fn(input: &[u8], ctx: &mut Context, out: &mut Emitter) -> Result<()>`
/// as the module's map function.
#[proc_macro_attribute]
pub fn map(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(&MAP, attr, item)
}

/// Marks `fn(key: &[u8], values: &mut Values, out: &mut Emitter) -> Result<()>`
/// as the module's combine function (a reduce run on one map's output).
#[proc_macro_attribute]
pub fn combine(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(&COMBINE, attr, item)
}

/// Marks `fn(key: &[u8], values: &mut Values, ctx: &mut Context, out: &mut Emitter) -> Result<()>`
/// as the module's reduce function.
#[proc_macro_attribute]
pub fn reduce(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(&REDUCE, attr, item)
}

/// Marks `fn(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>>` as the
/// module's preprocessor.
#[proc_macro_attribute]
pub fn preprocess(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(&PREPROCESS, attr, item)
}

/// Marks `fn(input: &[u8], ctx: &mut Context) -> Result<Vec<u8>>` as the
/// module's plain task.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(&TASK, attr, item)
}

fn expand(kind: &Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = TokenStream2::from(attr);
    let function = parse_macro_input!(item as ItemFn);
    match check(kind, &attr, &function) {
        Ok(()) => glue(kind, &function).into(),
        Err(error) => {
            // Keep the function so that only our error is reported, not a
            // cascade of "cannot find function" errors.
            let error = error.to_compile_error();
            quote!(#error #function).into()
        }
    }
}

fn check(kind: &Kind, attr: &TokenStream2, function: &ItemFn) -> syn::Result<()> {
    if !attr.is_empty() {
        return Err(syn::Error::new(
            attr.span(),
            format!("#[sandmill_sdk::{}] takes no arguments", kind.attr),
        ));
    }
    let sig = &function.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new(
            asyncness.span(),
            format!("#[sandmill_sdk::{}] functions cannot be async", kind.attr),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("#[sandmill_sdk::{}] functions cannot be generic", kind.attr),
        ));
    }
    if sig.inputs.len() != kind.arity {
        return Err(syn::Error::new(
            sig.inputs.span(),
            format!(
                "#[sandmill_sdk::{}] expects {} arguments: {}",
                kind.attr, kind.arity, kind.signature
            ),
        ));
    }
    Ok(())
}

fn glue(kind: &Kind, function: &ItemFn) -> TokenStream2 {
    let user_fn = &function.sig.ident;
    let module = format_ident!("__sandmill_{}_glue", kind.attr);
    let world = kind.world;
    let interface = format_ident!("{}", kind.interface);
    let export_fn = format_ident!("{}", kind.export_fn);
    // The call carries the user's span, so a wrong argument or return type
    // is reported at the user's function.
    let span = function.sig.span();
    let (params, ret, body) = match kind.attr {
        "map" => (
            quote!(input: ::std::vec::Vec<u8>),
            quote!(::core::result::Result<(), ::std::string::String>),
            quote_spanned!(span=> ::sandmill_sdk::__private::run_map(&HOST, super::#user_fn, &input)),
        ),
        "combine" => (
            quote!(groups: ::std::vec::Vec<u8>),
            quote!(::core::result::Result<(), ::std::string::String>),
            quote_spanned!(span=> ::sandmill_sdk::__private::run_combine(&HOST, super::#user_fn, &groups)),
        ),
        "reduce" => (
            quote!(groups: ::std::vec::Vec<u8>),
            quote!(::core::result::Result<(), ::std::string::String>),
            quote_spanned!(span=> ::sandmill_sdk::__private::run_reduce(&HOST, super::#user_fn, &groups)),
        ),
        _ => (
            quote!(input: ::std::vec::Vec<u8>),
            quote!(::core::result::Result<::std::vec::Vec<u8>, ::std::string::String>),
            quote_spanned!(span=> ::sandmill_sdk::__private::run_bytes(&HOST, super::#user_fn, &input)),
        ),
    };
    let wit = wit_text();
    let host = host_table();
    quote! {
        // Outside the sandbox only tests call it: no glue does.
        #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
        #function

        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[allow(unsafe_code, missing_docs, clippy::all)]
        mod #module {
            ::sandmill_sdk::__private::wit_bindgen::generate!({
                inline: #wit,
                world: #world,
                runtime_path: "::sandmill_sdk::__private::wit_bindgen::rt",
            });

            #host

            struct Glue;

            impl exports::sandmill::guest::#interface::Guest for Glue {
                fn #export_fn(#params) -> #ret {
                    #body
                }
            }

            export!(Glue);
        }
    }
}

/// The table of host imports handed to the SDK, built from this module's
/// generated import bindings.
fn host_table() -> TokenStream2 {
    quote! {
        use sandmill::guest::host as imports;

        fn log(level: ::sandmill_sdk::Level, message: &str) {
            let level = match level {
                ::sandmill_sdk::Level::Trace => imports::Level::Trace,
                ::sandmill_sdk::Level::Debug => imports::Level::Debug,
                ::sandmill_sdk::Level::Info => imports::Level::Info,
                ::sandmill_sdk::Level::Warn => imports::Level::Warn,
                ::sandmill_sdk::Level::Error => imports::Level::Error,
            };
            imports::log(level, message)
        }
        fn emit(records: &[u8]) {
            imports::emit(records)
        }

        static HOST: ::sandmill_sdk::__private::HostFns = ::sandmill_sdk::__private::HostFns {
            log,
            progress: imports::progress,
            counter: imports::counter,
            params: imports::params,
            input_name: imports::input_name,
            emit,
            next_values: imports::next_values,
            report_panic: imports::report_panic,
            attempt: imports::attempt,
        };
    }
}

/// The contract, read when this crate is built (so a change to the WIT file
/// rebuilds it).
fn wit_text() -> syn::LitStr {
    syn::LitStr::new(include_str!("../wit/sandmill.wit"), Span::call_site())
}
