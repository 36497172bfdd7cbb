//! The PTX module built from `gpu-kernels` by `build.rs`, and checks on it.

/// PTX text of every MMSB kernel, built by rustc's NVPTX backend.
/// Empty when [`SKIPPED`] says why no kernels were built.
pub const PTX: &str = include_str!(env!("MMSB_PTX_PATH"));

/// Why this binary carries no kernels (the toolchain lacked `rust-src`, or
/// the build ran under Miri); `None` when [`PTX`] holds them. A GPU backend
/// refuses to start in a build without them.
pub const SKIPPED: Option<&str> = option_env!("MMSB_PTX_SKIPPED");

#[cfg(test)]
use gpu_kernels::names as kernel_names;

/// Names of the `.entry` points declared in `ptx`.
pub(crate) fn entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix(".visible .entry ").or_else(|| l.strip_prefix(".entry "))?;
            Some(rest.split(|c: char| c == '(' || c.is_whitespace()).next().unwrap_or(rest))
        })
        .collect()
}

/// Lines of `ptx` that declare an unresolved external symbol.
#[cfg(test)]
fn unresolved_externs(ptx: &str) -> Vec<&str> {
    ptx.lines().map(str::trim).filter(|l| l.starts_with(".extern")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "the PTX build is skipped under Miri")]
    fn embedded_ptx_declares_every_kernel_and_no_externs() {
        if let Some(why) = SKIPPED {
            // Only a build that lacked rust-src gets here; CI and the GPU
            // check build with MMSB_REQUIRE_PTX=1, where that is an error.
            // Straight to stderr: the harness hides a passing test's output.
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "SKIPPED: embedded PTX check ({why})");
            return;
        }
        let entries = entries(PTX);
        for name in kernel_names::ALL {
            assert!(entries.contains(name), "kernel {name} missing from PTX entries {entries:?}");
        }
        assert!(unresolved_externs(PTX).is_empty(), "unresolved externs: {:?}", unresolved_externs(PTX));
        assert!(PTX.contains(".address_size 64"));
    }

    #[test]
    #[cfg_attr(miri, ignore = "the PTX build is skipped under Miri")]
    fn the_inline_kernel_reads_its_parameters_in_place() {
        // The inline apply reads its data by address from the parameter
        // space (inline asm naming the parameter); a kernel whose body
        // indexed the parameter in Rust would first copy all of it to each
        // thread's local memory (a `__local_depot`), which costs more than
        // the upload it saves.
        if SKIPPED.is_some() {
            return;
        }
        let at = PTX.find(".entry mmsb_apply_inline(").expect("the inline kernel is in the PTX");
        let body = &PTX[at..];
        let body = &body[..body.find("\n}").expect("the kernel's body ends")];
        assert!(body.contains("mmsb_apply_inline_param_0[2448]"), "the parameter is one InlineApply");
        assert!(!body.contains("__local_depot"), "the inline kernel copies its parameters to local memory");
        assert!(body.contains("ld.param.u8"), "the data bytes are read from the parameter space");
    }

    #[test]
    fn entry_parser_reads_declarations() {
        let ptx = ".version 7.0\n.visible .entry k1(\n.param .u64 a\n)\n.entry k2()\n.extern .func foo;\n";
        assert_eq!(entries(ptx), vec!["k1", "k2"]);
        assert_eq!(unresolved_externs(ptx), vec![".extern .func foo;"]);
    }
}
