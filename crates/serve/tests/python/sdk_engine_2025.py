"""2025-only pool properties over the local engine survive `kill -9` of `shipyard serve`.

argv[1]: `before` (create a container pool of 0 nodes with `jobDefaultOrder` and `ipFamilies`) or
`after` (after the restart: read them back, then delete the pool and wait until it is gone);
argv[2]: the pool id. Environment as sdk_expand.py. Prints `ok: ...` per check and
`PHASE <name> PASSED`.
"""
import os
import sys

from azure.batch import BatchClient, models
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError

phase, pool_id = sys.argv[1], sys.argv[2]
client = BatchClient(os.environ["SHIPYARD_SERVE_URL"],
                     AzureNamedKeyCredential(os.environ["SHIPYARD_SERVE_ACCOUNT"], os.environ["SHIPYARD_SERVE_KEY"]))


def check(pool):
    assert pool.task_scheduling_policy.job_default_order.lower() == "creationtime", pool.task_scheduling_policy
    ips = pool.network_configuration.public_ip_address_configuration
    assert ips.ip_families == ["IPv4"], ips
    print(f"ok: {phase}: jobDefaultOrder and ipFamilies", flush=True)


if phase == "before":
    client.create_pool(models.BatchPoolCreateOptions(
        id=pool_id, vm_size="standard_d2s_v3", target_dedicated_nodes=0,
        task_scheduling_policy=models.BatchTaskSchedulingPolicy(
            node_fill_type="pack", job_default_order=models.BatchJobDefaultOrder.CREATION_TIME),
        network_configuration=models.NetworkConfiguration(
            public_ip_address_configuration=models.BatchPublicIpAddressConfiguration(
                ip_address_provisioning_type="batchmanaged", ip_families=["IPv4"])),
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"),
            node_agent_sku_id="batch.node.ubuntu 22.04",
            container_configuration=models.BatchContainerConfiguration(type="dockerCompatible"))))
    check(client.get_pool(pool_id))
else:
    check(client.get_pool(pool_id))
    client.begin_delete_pool(pool_id, polling_interval=0.5).result()
    try:
        client.get_pool(pool_id)
        raise AssertionError("pool still there after its deletion")
    except ResourceNotFoundError:
        print("ok: pool deleted", flush=True)
print(f"PHASE {phase} PASSED")
