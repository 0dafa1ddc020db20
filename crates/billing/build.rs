// `sqlx::migrate!` embeds the migrations at compile time and tracks only the files it
// saw; a new file must rebuild this crate too (the target directory is shared
// between checkouts, so a stale embed would otherwise survive a clean clone).
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
