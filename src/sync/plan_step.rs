//! The steps before the cluster is written: the checkout's manifests loaded and decrypted, then
//! resolved against discovery into a plan.
use super::error::SyncError;
use super::options::SyncOptions;
use super::report::SyncReport;
use crate::manifests::{self, Manifest};
use crate::plan::{self, Discovery, PlanContext};
use crate::source::Checkout;

/// Manifests: any error fails the sync before anything is applied.
pub fn load(checkout: &Checkout, options: &SyncOptions) -> Result<Vec<Manifest>, SyncError> {
    let target = &options.target;
    manifests::load_with_keys(&checkout.dir, &target.paths, &target.decryption)
        .map_err(|e| SyncError::Manifests(e.0))
}

/// Resolves every object against the API; its warnings go to the report.
pub fn make_plan(
    manifests: Vec<Manifest>,
    discovery: &Discovery,
    ctx: &PlanContext,
    report: &mut SyncReport,
) -> Result<plan::Plan, SyncError> {
    let mut the_plan = plan::plan(manifests, discovery, ctx);
    report.warnings.append(&mut the_plan.warnings);
    match the_plan.errors.is_empty() {
        true => Ok(the_plan),
        false => Err(SyncError::Plans(std::mem::take(&mut the_plan.errors))),
    }
}
