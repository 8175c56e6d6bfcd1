//! Device names: `cpu`, `cuda`, `cuda:N`.

use candle_core::Device;

use crate::error::ModelError;

/// Whether `spec` names a device crosstrain knows: `cpu`, `cuda` or `cuda:N` (checked
/// without touching a GPU, for config validation).
pub fn is_device_spec(spec: &str) -> bool {
    device_ordinal(spec).is_ok()
}

/// `None` for the CPU, `Some(N)` for CUDA device N.
fn device_ordinal(spec: &str) -> Result<Option<usize>, ModelError> {
    let lower = spec.trim().to_ascii_lowercase();
    match lower.as_str() {
        "cpu" => Ok(None),
        "cuda" | "gpu" => Ok(Some(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| {
                ModelError::Device(format!("unknown device {spec:?}; use cpu, cuda or cuda:N"))
            }),
    }
}

/// The device `cpu`, `cuda` or `cuda:N` names. CUDA needs a build with the `cuda` feature
/// (`scripts/build-cuda.sh`); without it the error says so instead of failing later.
pub fn parse_device(spec: &str) -> Result<Device, ModelError> {
    match device_ordinal(spec)? {
        None => Ok(Device::Cpu),
        Some(ordinal) => cuda_device(ordinal),
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device, ModelError> {
    Device::new_cuda(ordinal).map_err(|e| ModelError::Device(format!("cuda:{ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device, ModelError> {
    Err(ModelError::Device(format!(
        "cuda:{ordinal} was asked for, but this crosstrain was built without CUDA; build it \
         with `cargo build --release -p crosstrain --features cuda` (see scripts/build-cuda.sh)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" CPU ").unwrap().is_cpu());
        for good in ["cuda", "cuda:0", "cuda:3", "gpu"] {
            assert!(is_device_spec(good), "{good}");
        }
        for bad in ["tpu", "cuda:", "cuda:x", "cuda0", ""] {
            assert!(!is_device_spec(bad), "{bad}");
            let error = parse_device(bad).unwrap_err().to_string();
            assert!(error.contains("use cpu, cuda or cuda:N"), "{error}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let error = parse_device("cuda:1").unwrap_err().to_string();
        assert!(
            error.contains("cuda:1") && error.contains("--features cuda"),
            "{error}"
        );
    }
}
