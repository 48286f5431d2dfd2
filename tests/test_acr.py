"""ACR's part: a registry that wants credentials, its credentials from ARM, and what a model update pushes.

The registry is a second Debian docker-registry of this test's own, with token
auth, on a free 127.0.0.1 port (tests/fake_acr.py); the shared registry on
:5000 is not touched. ARM is the local fake (tests/fake_arm.py). No Azure.
"""

from __future__ import annotations

import io
import tarfile

import docker
import pytest
import requests

from fake_acr import TokenRegistry
from mldeploy.providers.image_registry import oci_registry
from mldeploy.providers.targets.azure.arm import ArmError

pytestmark = [pytest.mark.docker]

SUB = "00000000-1111-2222-3333-444444444444"
BASE = "mldeploy-test/acr-base:tiny"
RUNNABLE = "mldeploy/base:bookworm-py3.11"  # the fake ACI runs what it pulls: it needs python3
"""A one-file image: what is checked is the registry protocol, not the size of what is pushed."""


@pytest.fixture(scope="module", autouse=True)
def tiny_base():
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY hello /hello\n"), ("hello", b"hello\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client = docker.from_env()
    client.images.build(fileobj=context, custom_context=True, tag=BASE, rm=True)
    yield BASE
    client.images.remove(BASE, force=True)


@pytest.fixture
def registry(tmp_path):
    reg = TokenRegistry(tmp_path / "registry")
    yield reg
    reg.close()


def auth(reg: TokenRegistry) -> oci_registry.RegistryAuth:
    return oci_registry.RegistryAuth(reg.address, reg.username, reg.password)


def test_pushes_and_reads_need_credentials(registry):
    repo = f"{registry.address}/mldeploy-test/base"
    with pytest.raises(oci_registry.RegistryError, match="unauthorized"):
        oci_registry.push(BASE, repo, "anon")
    r = requests.get(f"http://{registry.address}/v2/mldeploy-test/base/tags/list", timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer realm=")
    wrong = oci_registry.RegistryAuth(registry.address, registry.username, "not-the-password")
    with pytest.raises(oci_registry.RegistryError, match="401"):
        oci_registry.tags(repo, auth=wrong)
    digest = oci_registry.push(BASE, repo, "v1", auth=auth(registry))
    assert oci_registry.tags(repo, auth=auth(registry)) == ["v1"]
    assert oci_registry.manifest_exists(repo, digest, auth=auth(registry))
    assert "not-the-password" not in repr(wrong) and registry.password not in repr(auth(registry))
    assert registry.tokens_issued and all(t["account"] == registry.username for t in registry.tokens_issued)
    assert oci_registry.delete_repository(repo, auth=auth(registry)) == 1
    assert oci_registry.tags(repo, auth=auth(registry)) == []
    images_cleanup(repo, "anon", "v1")


def images_cleanup(repo: str, *tags: str) -> None:
    from mldeploy.providers.images import build as images

    for t in tags:
        images.remove_image(f"{repo}:{t}")


def test_a_model_only_update_pushes_only_the_model_layer(registry, tmp_path):
    repo = f"{registry.address}/mldeploy-test/scoring"
    made = []
    try:
        counts = []
        for version in (1, 2):
            model_dir = tmp_path / f"m{version}"
            model_dir.mkdir()
            (model_dir / "model.pkl").write_bytes(f"weights of version {version}".encode() * 100)
            models = [{"name": "ridge", "version": version, "model_dir": str(model_dir)}]
            tag = oci_registry.model_layer_tag("base-id", models)
            image = oci_registry.build_model_image(f"{repo}:{tag}", BASE, models, {"mldeploy.test": "acr"})
            made.append(tag)
            stats: dict[str, int] = {}
            oci_registry.push(image, repo, tag, auth=auth(registry), stats=stats)
            counts.append(stats)
        # v1 uploads the inference image's layers and its model layer; v2 only its model layer.
        assert counts[0]["pushed"] >= 2 and counts[0]["existing"] == 0, counts
        assert counts[1] == {"pushed": 1, "existing": counts[0]["pushed"] - 1}, counts
    finally:
        oci_registry.delete_repository(repo, auth=auth(registry))
        images_cleanup(repo, *made)


def test_acr_credentials_come_from_list_credentials(fake, registry):
    from mldeploy.providers.image_registry import acr

    fake.add_registry(SUB, "rg-ml", "mldeployacr", registry.address, registry.username, registry.password)
    got = acr.registry_auth(SUB, "rg-ml", "mldeployacr", fake.url)
    assert (got.server, got.username, got.password) == (registry.address, registry.username, registry.password)
    assert [p for m, p, s in fake.requests if m == "POST" and p.split("?")[0].endswith("/listCredentials") and s == 200]
    assert "api-version=2025-11-01" in next(p for m, p, s in fake.requests if "listCredentials" in p)
    repo = f"{got.server}/mldeploy-test/from-arm"
    oci_registry.push(BASE, repo, "v1", auth=got)
    assert oci_registry.tags(repo, auth=got) == ["v1"]
    oci_registry.delete_repository(repo, auth=got)
    images_cleanup(repo, "v1")

    fake.add_registry(SUB, "rg-ml", "noadmin1", registry.address, "x", "y", admin=False)
    with pytest.raises(ArmError, match="400 UnAuthorizedForCredentialOperations: Cannot perform credential operations"):
        acr.registry_auth(SUB, "rg-ml", "noadmin1", fake.url)
    with pytest.raises(ArmError, match="404 ResourceNotFound"):
        acr.registry_auth(SUB, "rg-ml", "missing1", fake.url)


def test_aci_pulls_with_the_registry_credentials_and_arm_never_returns_them(fake, registry):
    """The group's image lives only in the registry with auth: the fake pulls it with imageRegistryCredentials."""
    from mldeploy.providers.targets.azure.arm import ContainerGroups
    from test_aci_fake_arm import WEB, body

    repo = f"{registry.address}/mldeploy-test/web"
    digest = oci_registry.push(RUNNABLE, repo, "v1", auth=auth(registry))
    images_cleanup(repo, "v1")
    groups = ContainerGroups(SUB, "rg", fake.url)
    try:
        bad = body(WEB)
        bad["properties"]["containers"][0]["properties"]["image"] = f"{repo}@{digest}"
        bad["properties"]["imageRegistryCredentials"] = [{"server": registry.address, "username": registry.username, "password": "wrong"}]
        with pytest.raises(ArmError, match="InaccessibleImage.*registry credential") as err:
            groups.put("web", bad)
        assert "unauthorized" in str(err.value) and "wrong" not in str(err.value)  # the pull event, not the password
        good = body(WEB)
        good["properties"]["containers"][0]["properties"]["image"] = f"{repo}@{digest}"
        good["properties"]["imageRegistryCredentials"] = [{"server": registry.address, "username": registry.username, "password": registry.password}]
        got = groups.put("web", good)  # the next up converges
        assert got["provisioning_state"] == "Succeeded"
        assert got["image_registry_credentials"][0]["server"] == registry.address
        assert registry.password not in str(got)  # x-ms-secret: not returned
        assert requests.get(f"http://127.0.0.1:{fake.host_port('web', 8000)}/", timeout=5).status_code == 200
    finally:
        groups.delete("web")
        oci_registry.delete_repository(repo, auth=auth(registry))
        from mldeploy.providers.images import build as images

        images.remove_image(f"{repo}@{digest}")  # what the fake's pull left


def test_aci_body_carries_the_credentials_and_passes_the_spec():
    from arm_spec import check
    from test_aci_unit import props

    from mldeploy.providers.targets.service import diff_service
    from mldeploy.providers.targets import aci

    creds = {"registry_server": "myacr.azurecr.io", "registry_username": "myacr", "registry_password": "p4ss"}
    body = aci.container_group_body(props(**creds), ["k" * 32])
    assert body["properties"]["imageRegistryCredentials"] == [{"server": "myacr.azurecr.io", "username": "myacr", "password": "p4ss"}]
    check("Microsoft.ContainerInstance", "2025-09-01", "ContainerGroup", body)
    assert "imageRegistryCredentials" not in aci.container_group_body(props(), None)["properties"]
    d = diff_service(props(**creds), props(**{**creds, "registry_password": "rotated"}))
    assert d.changes and not d.replaces  # a rotated password is a PUT of the same group


def test_registry_credentials_provider_checks_and_diffs():
    from mldeploy.providers.image_registry.credentials import check_credentials, diff_credentials

    ok = {"source": "acr", "subscription_id": SUB, "resource_group": "rg", "registry_name": "mldeployacr"}
    assert check_credentials(ok) == []
    assert [f.property for f in check_credentials({**ok, "subscription_id": "nope"})] == ["subscription_id"]
    assert [f.property for f in check_credentials({**ok, "registry_name": "my-acr"})] == ["registry_name"]
    assert [f.property for f in check_credentials({"source": "given", "server": "h", "username": "u"})] == ["password"]
    assert diff_credentials(ok, {**ok, "registry_name": "otheracr1"}).replaces == ["registry_name"]
    given = {"source": "given", "server": "h", "username": "u", "password": "p"}
    assert diff_credentials(given, {**given, "password": "q"}).changes


# ------------------------------------------------------------ the component's wiring, mocked

from test_components_unit import make_image, make_model, mocks, project  # noqa: E402,F401 - fixtures


@pytest.fixture
def program_without_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The program never asks Docker: these tests declare with DOCKER_HOST on a socket that does not exist."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/mldeploy-no-docker.sock")

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # how the Pulumi SDK marks a secret on the wire


def _aci_config(**extra: str) -> None:
    import pulumi

    pulumi.runtime.set_all_config({"mldeploy:target": "aci", "mldeploy:azureSubscriptionId": SUB,
                                   "mldeploy:azureResourceGroup": "rg-ml", "mldeploy:azureLocation": "westeurope",
                                   "mldeploy:imageRegistry": "mldeployacr.azurecr.io", **extra})


@pytest.mark.usefixtures("program_without_docker")
def test_an_acr_in_stack_config_gives_pushes_and_the_group_its_credentials(mocks):
    import pulumi

    from mldeploy.components import ContainerInstanceService

    _aci_config(**{"mldeploy:acrName": "mldeployacr"})
    plain = mocks.new_resource

    def with_credentials(args):  # what listCredentials would give the provider
        rid, outs = plain(args)
        if args.typ.endswith("mldeploy:RegistryCredentials"):
            outs.update(server="mldeployacr.azurecr.io", username="mldeployacr", password="from-arm")
        return rid, outs

    mocks.new_resource = with_credentials

    @pulumi.runtime.test
    def program():
        svc = ContainerInstanceService("aciservice", models=[make_model()], image=make_image(), auth_enabled=True)

        def check(_: object) -> None:
            creds = mocks.resources["aciservice-registry-credentials"]
            assert mocks.types["aciservice-registry-credentials"].endswith("mldeploy:RegistryCredentials")
            assert (creds["source"], creds["registry_name"], creds["subscription_id"]) == ("acr", "mldeployacr", SUB)
            for image in ("aciservice-image", "aciservice-front-image"):
                assert "registry_auth" in mocks.resources[image], image
                assert mocks.resources[image]["repository"].startswith("mldeployacr.azurecr.io/")
            service = mocks.resources["aciservice-service"]
            assert (service["registry_server"], service["registry_username"]) == ("mldeployacr.azurecr.io", "mldeployacr")
            assert SECRET_SIG in str(service["registry_password"]), "the password travels as a secret"
            assert SECRET_SIG in str(mocks.resources["aciservice-image"]["registry_auth"])

        return svc.scoring_uri.apply(check)

    program()


@pytest.mark.usefixtures("program_without_docker")
def test_no_credentials_configured_means_none_are_sent(mocks):
    import pulumi

    from mldeploy.components import ContainerInstanceService

    _aci_config()

    @pulumi.runtime.test
    def program():
        svc = ContainerInstanceService("aciservice", models=[make_model()], image=make_image())

        def check(_: object) -> None:
            assert "aciservice-registry-credentials" not in mocks.resources
            assert "registry_auth" not in mocks.resources["aciservice-image"]
            assert "registry_password" not in mocks.resources["aciservice-service"]

        return svc.scoring_uri.apply(check)

    program()


def test_registry_urls_are_https_except_on_this_machine():
    assert oci_registry.base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert oci_registry.base_url("localhost:5001") == "http://localhost:5001"
    assert oci_registry.base_url("mldeployacr.azurecr.io") == "https://mldeployacr.azurecr.io"


def test_an_entra_id_token_is_exchanged_for_an_acr_refresh_token(fake, tmp_path):
    """For a registry whose admin user is off: ACR's /oauth2/exchange, as `az acr login` does."""
    import time

    from mldeploy.providers.image_registry import acr
    from mldeploy.providers.targets.azure.arm import StaticToken

    reg = TokenRegistry(tmp_path / "exchange", accept_access_token=lambda t: fake.tokens.get(t, 0) > time.time())
    try:
        got = acr.exchange_token(reg.address, cred=StaticToken(fake.issue_token()))
        assert got.username == acr.REFRESH_TOKEN_USER and got.password in reg.refresh_tokens
        repo = f"{reg.address}/mldeploy-test/exchanged"
        oci_registry.push(BASE, repo, "v1", auth=got)
        assert oci_registry.tags(repo, auth=got) == ["v1"]
        oci_registry.delete_repository(repo, auth=got)
        images_cleanup(repo, "v1")
        with pytest.raises(ArmError, match="token exchange at .*/oauth2/exchange: 401"):
            acr.exchange_token(reg.address, cred=StaticToken(fake.issue_token(ttl=-10)))
    finally:
        reg.close()
