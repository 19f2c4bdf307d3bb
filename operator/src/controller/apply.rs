//! Apply step: server-side apply of the built objects, one field manager
//! ([`crate::FIELD_MANAGER`]), forced so the operator stays the owner of what it manages.
//!
//! Order: ConfigMap before the Deployment that mounts it, Services, then the optional objects.

use super::build::{Objects, service_monitor_resource};
use crate::{Error, FIELD_MANAGER, Result};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// The objects as the API server returned them after the apply.
#[derive(Debug, Clone)]
pub struct Applied {
    pub deployment: Deployment,
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
    let deployment = ssa(client, ns, &objects.deployment).await?;
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
        deployment,
        stratum_service,
    })
}
