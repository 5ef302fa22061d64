#!/usr/bin/env bash
# Create the AWS security group for ray_cluster.yaml: SSH (22/tcp) from your address only, and all
# traffic between the cluster's own nodes (Ray's GCS, raylets, object managers and the MLflow server
# talk on many ports). Nothing else is opened; outbound traffic stays allowed (pip, S3).
#
#   cluster/aws_security_group.sh --my-ip 203.0.113.7 --region us-west-2
#   -> prints sg-0123456789abcdef0: put it in ray_cluster.yaml's SecurityGroupIds
#
# Why not let `ray up` create the group: Ray's AWS launcher adds "22/tcp from 0.0.0.0/0" to every
# group it creates, whatever provider.security_group.IpPermissions says
# (ray/autoscaler/_private/aws/config.py: _create_default_inbound_rules). With SecurityGroupIds set
# on every node type it creates and changes no group.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: cluster/aws_security_group.sh [--my-ip IPV4] [--region REGION] [--name NAME] [--vpc-id VPC]

Create a security group that admits SSH from IPV4/32 only plus all traffic between its members,
and print its id (for ray_cluster.yaml's SecurityGroupIds). Uses the `aws` CLI and its credentials.

Options:
  --my-ip IPV4    your public IPv4 address (default: asked from https://checkip.amazonaws.com)
  --region REGION AWS region (default: us-west-2, as in ray_cluster.yaml)
  --name NAME     group name (default: yolov2-ray)
  --vpc-id VPC    VPC to create it in (default: the region's default VPC)
  -h, --help      show this help

An existing group with that name in that VPC is left unchanged: its id is printed with its
inbound rules, for you to check.
EOF
}

die() {
    echo "aws_security_group.sh: $*" >&2
    exit 2
}

my_ip=""
region="us-west-2"
name="yolov2-ray"
vpc_id=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --my-ip) my_ip="${2:?--my-ip needs a value}"; shift ;;
        --region) region="${2:?--region needs a value}"; shift ;;
        --name) name="${2:?--name needs a value}"; shift ;;
        --vpc-id) vpc_id="${2:?--vpc-id needs a value}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

command -v aws >/dev/null || die "the aws CLI is not installed (https://aws.amazon.com/cli/)"
if [[ -z "$my_ip" ]]; then
    my_ip="$(curl -fsS --max-time 10 https://checkip.amazonaws.com | tr -d '[:space:]')" \
        || die "could not find your public IP: pass --my-ip"
    echo "your public IP: $my_ip" >&2
fi
# One host only: a plain dotted IPv4 address, not a range, never 0.0.0.0.
octet='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
[[ "$my_ip" =~ ^$octet\.$octet\.$octet\.$octet$ ]] || die "--my-ip must be one IPv4 address like 203.0.113.7, got '$my_ip'"
[[ "$my_ip" != "0.0.0.0" ]] || die "--my-ip 0.0.0.0 would open SSH to the world"

export AWS_DEFAULT_REGION="$region"
if [[ -z "$vpc_id" ]]; then
    vpc_id="$(aws ec2 describe-vpcs --filters Name=isDefault,Values=true --query 'Vpcs[0].VpcId' --output text)"
    [[ "$vpc_id" == vpc-* ]] || die "no default VPC in $region: pass --vpc-id"
fi

existing="$(aws ec2 describe-security-groups \
    --filters "Name=group-name,Values=$name" "Name=vpc-id,Values=$vpc_id" \
    --query 'SecurityGroups[0].GroupId' --output text)"
if [[ "$existing" == sg-* ]]; then
    echo "security group $name already exists in $vpc_id; left unchanged. Its inbound rules:" >&2
    aws ec2 describe-security-groups --group-ids "$existing" --query 'SecurityGroups[0].IpPermissions' --output json >&2
    echo "$existing"
    exit 0
fi

sg_id="$(aws ec2 create-security-group --group-name "$name" --vpc-id "$vpc_id" \
    --description "yolov2-pipeline Ray cluster: SSH from one address, all traffic between members" \
    --query GroupId --output text)"
[[ "$sg_id" == sg-* ]] || die "create-security-group returned '$sg_id'"
aws ec2 authorize-security-group-ingress --group-id "$sg_id" \
    --ip-permissions "IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=$my_ip/32,Description=SSH from the operator}]" \
    >/dev/null
aws ec2 authorize-security-group-ingress --group-id "$sg_id" \
    --ip-permissions "IpProtocol=-1,UserIdGroupPairs=[{GroupId=$sg_id,Description=Ray cluster members}]" \
    >/dev/null
echo "created $name ($sg_id) in $vpc_id: SSH from $my_ip/32, all traffic between members" >&2
echo "$sg_id"
