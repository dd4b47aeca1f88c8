"""Checks that the IAM policy files use only the documented placeholders, and that the example
CloudFormation template's instance role grants exactly the instance policies: each inline policy
is the JSON file its name says (POLICIES), and every one of them is there.

Usage: check-policies.py IAM_DIR TEMPLATE (needs PyYAML, which cfn-lint brings)."""

import json
import pathlib
import re
import sys

import yaml

PLACEHOLDERS = {"Partition", "Region", "AccountId", "BucketName", "ReleasePrefix",
                "ParameterName", "KmsKeyId", "StatusPrefix", "TargetGroupName", "GroupName"}
# The template role's inline policies, by name, and the file each must equal.
POLICIES = {
    "drover-instance": "drover-instance-policy.json",
    "drover-instance-fleet": "drover-instance-fleet-policy.json",
    "drover-instance-loadbalancer": "drover-instance-loadbalancer-policy.json",
    "drover-instance-autoscaling": "drover-instance-autoscaling-policy.json",
}
# The JSON files' account-level placeholders are CloudFormation pseudo parameters in the template.
PSEUDO = {"Partition": "AWS::Partition", "Region": "AWS::Region", "AccountId": "AWS::AccountId"}


def cfn_tag(loader, suffix, node):
    """Reads a short-form intrinsic (!Sub x) as its long form ({"Fn::Sub": x})."""
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix if suffix == "Ref" else "Fn::" + suffix: value}


def unsub(value):
    """Replaces {"Fn::Sub": s} by s, everywhere in value."""
    if isinstance(value, dict):
        if list(value) == ["Fn::Sub"] and isinstance(value["Fn::Sub"], str):
            return value["Fn::Sub"]
        return {k: unsub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsub(v) for v in value]
    return value


def as_template(value):
    """The JSON policy's text with the account-level placeholders as pseudo parameters."""
    text = json.dumps(value)
    for name, pseudo in PSEUDO.items():
        text = text.replace("${%s}" % name, "${%s}" % pseudo)
    return json.loads(text)


def main(iam_dir, template_path):
    errors = []
    for path in sorted(pathlib.Path(iam_dir).glob("*.json")):
        text = path.read_text()
        json.loads(text)
        unknown = set(re.findall(r"\$\{([^}]*)\}", text)) - PLACEHOLDERS
        if unknown:
            errors.append(f"{path}: undocumented placeholders {sorted(unknown)}")

    yaml.SafeLoader.add_multi_constructor("!", cfn_tag)
    template = yaml.safe_load(pathlib.Path(template_path).read_text())
    role = template["Resources"]["InstanceRole"]["Properties"]
    inline = {p["PolicyName"]: unsub(p["PolicyDocument"]) for p in role["Policies"]}
    if sorted(inline) != sorted(POLICIES):
        errors.append(f"{template_path}: InstanceRole's policies are {sorted(inline)}, "
                      f"expected {sorted(POLICIES)}")
    for name, file in POLICIES.items():
        got = inline.get(name)
        want = as_template(json.loads((pathlib.Path(iam_dir) / file).read_text()))
        if got is not None and got != want:
            errors.append(
                f"{template_path}: InstanceRole's policy {name} differs from {file}\n"
                f"  template: {json.dumps(got, sort_keys=True)}\n"
                f"  expected: {json.dumps(want, sort_keys=True)}"
            )
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
