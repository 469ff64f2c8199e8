//! Prints the TaskRun CRD as YAML (`make crd` writes it into manifests/).

fn main() -> std::process::ExitCode {
    match taskrun::crd::yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: cannot render the CRD: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
