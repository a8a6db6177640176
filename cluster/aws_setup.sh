#!/usr/bin/env bash
# One-time AWS setup for cluster/gpu.yaml. Idempotent: run it again any time (e.g. when your IP changes).
# Needs the AWS CLI v2 with rights to manage IAM, EC2 security groups and S3.
#
#   bash cluster/aws_setup.sh BUCKET [SSH_CIDR]
#
#   BUCKET    S3 bucket for Tune checkpoints and MLflow artifacts (created, private, if missing)
#   SSH_CIDR  who may SSH to the nodes (default: your current public IP as a /32)
#
# Writes the cluster's settings (cluster/settings.sh): in cluster/cluster.env the bucket as the sweeps' storage
# (DIFFUSION_SWEEP_STORAGE), MLflow's artifact destination and its store's backup; in cluster/gpu.yaml the AMI id,
# resolved once from the public SSM parameter, so that every node the cluster ever boots runs the same image.
#
# Creates if missing, and updates the policies of:
#   * role + instance profile diffusion-sweep-worker: read/write s3://BUCKET, nothing else
#   * role + instance profile diffusion-sweep-head: AmazonEC2FullAccess (the autoscaler launches and
#     terminates workers), iam:PassRole for the worker role only, ssm:GetParameters for the public
#     AMI parameters (ImageId: resolve:ssm:...), read/write s3://BUCKET
#   * security group ray-diffusion-sweep in the default VPC: SSH (22) from SSH_CIDR and all traffic
#     between members of the group. No other inbound rule; a world-open SSH rule that Ray may have
#     added earlier is revoked. The Ray dashboard (8265), MLflow (5000), GCS (6379) and Ray client
#     (10001) stay unreachable from outside the cluster.
#
# Environment: AWS_REGION (default: provider.region of cluster/gpu.yaml), DRY_RUN=1 (print the AWS
# calls that change something, one per line, arguments separated by tabs, and the settings it would write as
# `settings<TAB>NAME=VALUE` lines; query nothing, write nothing).
set -euo pipefail
export AWS_PAGER=""     # AWS CLI v2 would otherwise page every JSON answer

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
BUCKET="$1"
SSH_CIDR="${2:-}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REGION="${AWS_REGION:-$(awk '$1 == "region:" {print $2; exit}' "$HERE/gpu.yaml")}"
DRY_RUN="${DRY_RUN:-0}"

HEAD_NAME=diffusion-sweep-head          # = IamInstanceProfile.Name of the head in gpu.yaml
WORKER_NAME=diffusion-sweep-worker      # = IamInstanceProfile.Name of the workers in gpu.yaml
SG_NAME=ray-diffusion-sweep             # = provider.security_group.GroupName in gpu.yaml

[[ "$BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || { echo "invalid bucket name: $BUCKET" >&2; exit 2; }

# AWS calls that change something: printed instead of run under DRY_RUN=1.
run() {
    if [ "$DRY_RUN" = "1" ]; then
        local IFS=$'\t'
        printf 'aws\t%s\n' "$*"
        return 0
    fi
    aws --region "$REGION" "$@"
}
# Read-only AWS calls: under DRY_RUN=1 they answer "not found" (exit 1, no output).
query() {
    if [ "$DRY_RUN" = "1" ]; then
        return 1
    fi
    aws --region "$REGION" "$@"
}

if [ -z "$SSH_CIDR" ]; then
    if [ "$DRY_RUN" = "1" ]; then
        SSH_CIDR=203.0.113.10/32
    else
        SSH_CIDR="$(curl -fsS --max-time 10 https://checkip.amazonaws.com | tr -d '[:space:]')/32"
    fi
fi
[[ "$SSH_CIDR" =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])$ ]] \
    || { echo "invalid SSH_CIDR: $SSH_CIDR" >&2; exit 2; }
[ "$SSH_CIDR" != "0.0.0.0/0" ] || { echo "refusing to open SSH to 0.0.0.0/0" >&2; exit 2; }

if [ "$DRY_RUN" = "1" ]; then
    ACCOUNT=000000000000
else
    ACCOUNT="$(aws sts get-caller-identity --query Account --output text)"
fi
echo "account $ACCOUNT, region $REGION, bucket s3://$BUCKET, SSH from $SSH_CIDR" >&2

# ---------------------------------------------------------------- bucket (private)
if ! query s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1; then
    if [ "$REGION" = "us-east-1" ]; then
        run s3api create-bucket --bucket "$BUCKET"
    else
        run s3api create-bucket --bucket "$BUCKET" --create-bucket-configuration "LocationConstraint=$REGION"
    fi
    run s3api put-public-access-block --bucket "$BUCKET" --public-access-block-configuration \
        "BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true"
fi

# ---------------------------------------------------------------- IAM
TRUST='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}'
S3_STATEMENTS='{"Sid":"SweepBucket","Effect":"Allow","Action":["s3:ListBucket","s3:GetBucketLocation","s3:ListBucketMultipartUploads"],"Resource":"arn:aws:s3:::'"$BUCKET"'"},{"Sid":"SweepObjects","Effect":"Allow","Action":["s3:GetObject","s3:PutObject","s3:DeleteObject","s3:AbortMultipartUpload","s3:ListMultipartUploadParts"],"Resource":"arn:aws:s3:::'"$BUCKET"'/*"}'
WORKER_POLICY='{"Version":"2012-10-17","Statement":['"$S3_STATEMENTS"']}'
HEAD_POLICY='{"Version":"2012-10-17","Statement":['"$S3_STATEMENTS"',{"Sid":"PassWorkerRole","Effect":"Allow","Action":"iam:PassRole","Resource":"arn:aws:iam::'"$ACCOUNT"':role/'"$WORKER_NAME"'"},{"Sid":"ResolvePublicAmiParameters","Effect":"Allow","Action":["ssm:GetParameter","ssm:GetParameters"],"Resource":["arn:aws:ssm:*::parameter/aws/service/*","arn:aws:ssm:*:*:parameter/aws/service/*"]}]}'

ensure_role_and_profile() {   # name inline-policy-json
    local name="$1" policy="$2"
    if ! query iam get-role --role-name "$name" >/dev/null 2>&1; then
        run iam create-role --role-name "$name" --assume-role-policy-document "$TRUST" \
            --description "diffusion-sweep Ray cluster node role"
    fi
    run iam put-role-policy --role-name "$name" --policy-name "$name-policy" --policy-document "$policy"
    if ! query iam get-instance-profile --instance-profile-name "$name" >/dev/null 2>&1; then
        run iam create-instance-profile --instance-profile-name "$name"
        CREATED_PROFILE=1
    fi
    local roles=""
    roles="$(query iam get-instance-profile --instance-profile-name "$name" \
        --query 'InstanceProfile.Roles[].RoleName' --output text 2>/dev/null || true)"
    case " $roles " in
        *" $name "*) ;;
        *) run iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name" ;;
    esac
}

CREATED_PROFILE=0
ensure_role_and_profile "$WORKER_NAME" "$WORKER_POLICY"
ensure_role_and_profile "$HEAD_NAME" "$HEAD_POLICY"
run iam attach-role-policy --role-name "$HEAD_NAME" --policy-arn arn:aws:iam::aws:policy/AmazonEC2FullAccess
if [ "$CREATED_PROFILE" = "1" ] && [ "$DRY_RUN" != "1" ]; then
    echo "waiting 15 s for the new instance profiles to propagate in IAM" >&2
    sleep 15
fi

# ---------------------------------------------------------------- security group
VPC="$(query ec2 describe-vpcs --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text || true)"
if [ "$DRY_RUN" = "1" ]; then VPC=vpc-dryrun; fi
if [ -z "$VPC" ] || [ "$VPC" = "None" ]; then
    echo "no default VPC in $REGION: create the security group in the VPC Ray uses yourself" >&2
    exit 1
fi
SG="$(query ec2 describe-security-groups \
    --filters "Name=group-name,Values=$SG_NAME" "Name=vpc-id,Values=$VPC" \
    --query 'SecurityGroups[0].GroupId' --output text || true)"
if [ -z "$SG" ] || [ "$SG" = "None" ]; then
    if [ "$DRY_RUN" = "1" ]; then
        run ec2 create-security-group --group-name "$SG_NAME" --vpc-id "$VPC" \
            --description "diffusion-sweep Ray cluster: SSH from owner, all traffic within the group"
        SG=sg-dryrun
    else
        SG="$(run ec2 create-security-group --group-name "$SG_NAME" --vpc-id "$VPC" \
            --description "diffusion-sweep Ray cluster: SSH from owner, all traffic within the group" \
            --query GroupId --output text)"
    fi
fi

# Add a rule; an identical existing rule is fine.
authorize() {
    local out
    if out="$(run ec2 authorize-security-group-ingress --group-id "$SG" --ip-permissions "$1" 2>&1)"; then
        [ -z "$out" ] || echo "$out"
    elif ! grep -q 'InvalidPermission.Duplicate' <<<"$out"; then
        echo "$out" >&2
        return 1
    fi
}
authorize '[{"IpProtocol":"-1","UserIdGroupPairs":[{"GroupId":"'"$SG"'","Description":"all traffic between cluster nodes"}]}]'
authorize '[{"IpProtocol":"tcp","FromPort":22,"ToPort":22,"IpRanges":[{"CidrIp":"'"$SSH_CIDR"'","Description":"SSH from the cluster owner"}]}]'
# Ray's own default group opens SSH to the world; take that rule away if it is there.
run ec2 revoke-security-group-ingress --group-id "$SG" \
    --ip-permissions '[{"IpProtocol":"tcp","FromPort":22,"ToPort":22,"IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]' \
    2>/dev/null || true

if [ "$DRY_RUN" != "1" ]; then
    echo "Inbound rules of $SG_NAME ($SG):" >&2
    aws --region "$REGION" ec2 describe-security-groups --group-ids "$SG" \
        --query 'SecurityGroups[0].IpPermissions' --output table >&2
fi
# ---------------------------------------------------------------- the cluster's settings
AMI_PARAMETER=/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id
if [ "$DRY_RUN" = "1" ]; then
    AMI=ami-0123456789abcdef0
else
    AMI="$(aws --region "$REGION" ssm get-parameter --name "$AMI_PARAMETER" --query Parameter.Value --output text)"
fi
SETTINGS=(
    "DIFFUSION_SWEEP_STORAGE=s3://$BUCKET/ray_results"
    "MLFLOW_ARTIFACTS_DESTINATION=s3://$BUCKET/mlflow-artifacts"
    "MLFLOW_STORE_BACKUP=s3://$BUCKET/mlflow/mlflow.db"
    "IMAGE_ID=$AMI"
)
if [ "$DRY_RUN" = "1" ]; then
    printf 'settings\t%s\n' "${SETTINGS[@]}"
else
    bash "$HERE/settings.sh" "${SETTINGS[@]}" >&2
fi

echo "done: instance profiles $HEAD_NAME / $WORKER_NAME, security group $SG_NAME ($SG), bucket s3://$BUCKET" >&2
echo "next: commit cluster/cluster.env and cluster/gpu.yaml (or keep them), then \`ray up cluster/gpu.yaml\`" >&2
