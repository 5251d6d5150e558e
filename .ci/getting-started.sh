#!/usr/bin/env bash
# The README's "Getting started", done the way a new user does it: a crate of its own outside
# the workspace, next to a directory `cluster` that is this checkout, whose `Cargo.toml` has
# exactly the README's dependency lines and whose `src/main.rs` is exactly the README's
# smallest program. It is built, started, stopped with SIGINT once both workers run, and must
# exit 0. Every other `rust` block of the README is compiled in the same crate (as an
# example), so the README's dependency lines are shown to be enough for all of its programs.
#
# The README's blocks are found by the HTML comments before them
# (`<!-- getting-started: Cargo.toml ... -->`, `<!-- getting-started: main.rs -->`), so the
# README and this check cannot drift apart. A README block that is deliberately not a
# complete program is fenced `rust,ignore` and must follow a `<!-- fragment: why -->` line.
#
# Two liberties, both for speed and neither visible to the code under test: the crate starts
# from the workspace's Cargo.lock (the same dependency versions, so the build works offline and
# reuses the workspace's compiled dependencies), and it builds into the workspace's target
# directory (override with CARGO_TARGET_DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
readme=$root/README.md
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cluster-getting-started.XXXXXX")
pid=
cleanup() {
    # The master only (its own pid): its workers die with it (PR_SET_PDEATHSIG).
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "getting-started: $*" >&2
    exit 1
}

# The fenced block right after the line that starts with `<!-- getting-started: $1`.
block() {
    awk -v marker="<!-- getting-started: $1" '
        index($0, marker) == 1 { state = 1; next }
        state == 1 && /^```/ { state = 2; next }
        state == 1 && NF { exit }
        state == 2 && /^```/ { exit }
        state == 2 { print }
    ' "$readme"
}

# Every `rust` block of the README, each ending with a line `//@ end`; with rustdoc's hidden
# lines (`# ...`) shown, as rustdoc compiles them. Fails on an `ignore` block that is not
# marked as a fragment.
rust_blocks() {
    awk '
        state == 0 && /^```rust/ {
            if ($0 ~ /ignore/) {
                if (previous !~ /^<!-- fragment: /) {
                    printf "README.md:%d: a rust,ignore block without a <!-- fragment: why --> line before it\n", NR > "/dev/stderr"
                    bad = 1
                }
                state = 2
            } else {
                state = 1
            }
            next
        }
        state != 0 && /^```/ { if (state == 1) print "//@ end"; state = 0; next }
        state == 1 {
            if ($0 == "#") print ""
            else if (substr($0, 1, 2) == "# ") print substr($0, 3)
            else print
            next
        }
        NF { previous = $0 }
        END { exit bad }
    ' "$readme"
}

manifest=$(block Cargo.toml)
program=$(block main.rs)
[ -n "$manifest" ] || fail "no <!-- getting-started: Cargo.toml --> block in README.md"
[ -n "$program" ] || fail "no <!-- getting-started: main.rs --> block in README.md"

# `../cluster` from the new crate is this checkout, as the README tells the user to arrange.
ln -s "$root" "$tmp/cluster"
app=$tmp/hello-cluster
mkdir -p "$app/src" "$app/examples"
{
    printf '[package]\nname = "hello-cluster"\nversion = "0.1.0"\nedition = "2024"\n\n'
    printf '%s\n' "$manifest"
    # The README's axum example needs the one dependency its section names ("no dependency
    # besides `cluster` and `axum`"): for the examples only, so the program above still builds
    # from the README's lines alone. The workspace's own axum line, so the lock has it.
    printf '\n[dev-dependencies]\n'
    grep -E '^axum = ' "$root/Cargo.toml"
} >"$app/Cargo.toml"
printf '%s\n' "$program" >"$app/src/main.rs"
cp "$root/Cargo.lock" "$app/Cargo.lock"

# The other programs, one example each (the smallest program is src/main.rs already).
blocks=$(rust_blocks) || fail "README.md has an unmarked rust,ignore block"
n=0
current=
while IFS= read -r line; do
    if [ "$line" = "//@ end" ]; then
        if [ "$current" != "$program"$'\n' ]; then
            n=$((n + 1))
            # A block without `main` is a statement list, which rustdoc wraps in one (and, as
            # rustdoc does, allows unused items in).
            if grep -q 'fn main' <<<"$current"; then
                printf '%s' "$current" >"$app/examples/readme_$n.rs"
            else
                printf '#![allow(unused)]\nfn main() {\n%s}\n' "$current" >"$app/examples/readme_$n.rs"
            fi
        fi
        current=
    else
        current+="$line"$'\n'
    fi
done <<<"$blocks"
echo "== getting started: building $app (src/main.rs and $n other README programs)"

cd "$app"
# Offline when the cargo cache has every crate already (after the workspace's own build).
build() { cargo build "$@" --bins --examples >"$tmp/build.log" 2>&1; }
if ! build --offline; then
    # Only a crate missing from the cache is worth a second, online, try.
    if ! grep -q -- '--offline' "$tmp/build.log" || ! build; then
        cat "$tmp/build.log" >&2
        fail "the README's crate does not build"
    fi
fi
grep -i 'warning' "$tmp/build.log" && fail "the README's crate builds with warnings"
echo "== getting started: built ($(grep -c '^ *Compiling' "$tmp/build.log" || true) crates compiled)"

# Run it as the README says, and stop it with SIGINT (what Ctrl-C sends) once both workers
# run. The README promises exit 0 within `grace` (5 s); allow 15 s for a loaded machine.
out=$tmp/out
: >"$out"
"$CARGO_TARGET_DIR/debug/hello-cluster" >"$out" 2>&1 &
pid=$!
running() { grep -c '^\[worker/[0-9] pid [0-9]*\] worker worker/[0-9]#1 running$' "$out" || true; }
for _ in $(seq 300); do
    [ "$(running)" -ge 2 ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ "$(running)" -lt 2 ]; then
    cat "$out" >&2
    fail "the two workers did not report running within 30 s"
fi
grep -q "^master $pid started$" "$out" || { cat "$out" >&2; fail "no line from the master"; }
kill -INT "$pid"
for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$pid" 2>/dev/null && { cat "$out" >&2; fail "the master did not exit within 15 s of SIGINT"; }
rc=0
wait "$pid" || rc=$?
pid=
cat "$out"
[ "$rc" = 0 ] || fail "the master exited with $rc after SIGINT, not 0"
[ "$(grep -c '^\[worker/[0-9] pid [0-9]*\] worker worker/[0-9]#1 stopping$' "$out")" = 2 ] ||
    fail "the workers did not both say they were stopping"
echo "== getting started: ok (exit 0 after SIGINT)"
