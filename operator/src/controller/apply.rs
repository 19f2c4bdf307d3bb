//! Apply step: server-side apply of the built objects, one field manager
//! ([`crate::FIELD_MANAGER`]), forced so the operator stays the owner of what it manages.
//!
//! Order: ConfigMap before the workload that mounts it (and the headless Service before the
//! StatefulSet it governs), then the other kind of workload if the proxy owns one (so switching
//! `dataVolume` never leaves two sets of pods), Services, then the optional objects.

use super::build::{Objects, Workload, headless_service_name, service_monitor_resource};
use crate::{Error, FIELD_MANAGER, Result};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// The objects as the API server returned them after the apply.
#[derive(Debug, Clone)]
pub struct Applied {
    pub workload: Workload,
    pub stratum_service: Service,
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn ssa<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .patch(&obj.name_any(), &params(), &Patch::Apply(obj))
        .await?)
}

/// Delete an object the operator no longer wants (e.g. a disabled PodDisruptionBudget); absent
/// is fine.
async fn delete_if_present<K>(api: Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// The object `name` of kind `K` if the StratumProxy with uid `owner_uid` controls it (another
/// controller's object of that name is none of ours).
async fn get_owned<K>(api: &Api<K>, name: &str, owner_uid: &str) -> Result<Option<K>>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    Ok(api.get_opt(name).await?.filter(|obj| {
        obj.owner_references()
            .iter()
            .any(|r| r.controller == Some(true) && r.uid == owner_uid)
    }))
}

/// Delete exactly `obj` (conditional on its uid, so a replacement of the same name is not
/// touched), cascading in the background: its pods drain as on any deletion. Absent is fine.
async fn delete_exact<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Resource + Clone + Debug + DeserializeOwned,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.uid(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&obj.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

/// The uid of the StratumProxy the built objects belong to (from their controller owner
/// reference; none for a proxy without a uid, which the API server never hands out).
fn owner_uid(objects: &Objects) -> Option<&str> {
    objects
        .workload
        .metadata()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// Apply every object of one StratumProxy in namespace `ns`. `service_monitor_api` says
/// whether the ServiceMonitor kind exists at all (if not, it is neither applied nor deleted).
pub async fn apply(
    client: &Client,
    ns: &str,
    name: &str,
    objects: &Objects,
    service_monitor_api: bool,
) -> Result<Applied> {
    ssa(client, ns, &objects.config_map).await?;
    if let Some(headless) = &objects.headless_service {
        ssa(client, ns, headless).await?;
    }
    let uid = owner_uid(objects);
    let workload = match &objects.workload {
        Workload::Deployment(d) => {
            let d = ssa(client, ns, d).await?;
            let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
            if let Some(uid) = uid
                && let Some(old) = get_owned(&sts, name, uid).await?
            {
                // Switched from a persistent data volume. The headless Service goes first, so
                // a failure in between leaves the StatefulSet to be found again.
                delete_if_present(
                    Api::<Service>::namespaced(client.clone(), ns),
                    &headless_service_name(name),
                )
                .await?;
                delete_exact(&sts, &old).await?;
            }
            Workload::Deployment(d)
        }
        Workload::StatefulSet(s) => {
            let s = ssa(client, ns, s).await?;
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
            if let Some(uid) = uid
                && let Some(old) = get_owned(&deployments, name, uid).await?
            {
                // Switched to a persistent data volume.
                delete_exact(&deployments, &old).await?;
            }
            Workload::StatefulSet(s)
        }
    };
    let stratum_service = ssa(client, ns, &objects.stratum_service).await?;
    ssa(client, ns, &objects.api_service).await?;
    match &objects.pod_disruption_budget {
        Some(pdb) => {
            ssa(client, ns, pdb).await?;
        }
        None => {
            delete_if_present(
                Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
                name,
            )
            .await?
        }
    }
    if service_monitor_api {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &service_monitor_resource());
        match &objects.service_monitor {
            Some(sm) => {
                api.patch(name, &params(), &Patch::Apply(sm)).await?;
            }
            None => delete_if_present(api, name).await?,
        }
    }
    Ok(Applied {
        workload,
        stratum_service,
    })
}
