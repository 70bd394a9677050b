// Migrations are embedded by refinery's macro, which cargo cannot see:
// rebuild when a migration is added or changed.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
