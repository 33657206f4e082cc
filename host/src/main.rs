//! The `chengis` binary: a thin wrapper around [`chengis::cli`].

fn main() {
    match chengis::cli::main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(chengis::cli::error::exit_code(&e));
        }
    }
}
