//! [`export_losses!`]: the one macro a plugin library calls.

/// Exports a set of [`LossPlugin`](crate::LossPlugin) types as a crosstrain loss library.
///
/// ```ignore
/// crosstrain_plugin_api::export_losses! {
///     library: env!("CARGO_PKG_NAME"),
///     version: env!("CARGO_PKG_VERSION"),
///     losses: [FocalBinaryLoss],
/// }
/// ```
///
/// It defines `pub fn crosstrain_loss_library() -> LossLibraryRef` (call it directly when the
/// crate is linked as an rlib, as the host does with its built-ins) and exports the abi_stable
/// library header that the host looks up when it loads the crate as a `cdylib`. Every call
/// into the plugin catches panics and returns them as errors.
#[macro_export]
macro_rules! export_losses {
    (library: $library:expr, version: $version:expr, losses: [$($loss:ty),* $(,)?] $(,)?) => {
        $crate::export_losses! {
            @contract_version $crate::CONTRACT_VERSION;
            library: $library, version: $version, losses: [$($loss),*]
        }
    };
    // Hidden: lets a test fixture pretend to be built against another contract version.
    (@contract_version $contract:expr; library: $library:expr, version: $version:expr,
     losses: [$($loss:ty),* $(,)?] $(,)?) => {
        /// The root module of this loss library.
        pub fn crosstrain_loss_library() -> $crate::ffi::LossLibraryRef {
            extern "C" fn losses() -> $crate::__private::RResult<
                $crate::__private::RVec<$crate::ffi::LossEntry>,
                $crate::__private::RString,
            > {
                $crate::__private::catch_panic($library, "losses", || {
                    ::std::result::Result::Ok(
                        ::std::vec![$($crate::__private::loss_entry::<$loss>()?),*].into(),
                    )
                })
            }
            const LIBRARY: &$crate::__private::WithMetadata<$crate::ffi::LossLibrary> =
                &$crate::__private::WithMetadata::new($crate::ffi::LossLibrary {
                    contract_version: $contract,
                    library_name: $crate::__private::RStr::from_str($library),
                    library_version: $crate::__private::RStr::from_str($version),
                    losses,
                });
            $crate::ffi::LossLibraryRef(LIBRARY.static_as_prefix())
        }

        /// The abi_stable header through which the host finds [`crosstrain_loss_library`].
        // SAFETY: the symbol name is the one abi_stable 0.11 looks up (checked by a test in
        // crosstrain-plugin-api), and no other item in a plugin may export it.
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        pub static CROSSTRAIN_LOSS_LIBRARY_HEADER: $crate::__private::LibHeader = {
            extern "C" fn erased_root_module() -> $crate::__private::RootModuleResult {
                $crate::__private::call_root_module_loader(crosstrain_loss_library)
            }
            // SAFETY: `erased_root_module` returns the erased prefix reference of a
            // `LossLibraryRef`, which is what `from_constructor::<LossLibraryRef>` requires.
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::ffi::LossLibraryRef>(
                    erased_root_module,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
