{{/* Release-qualified base name, within the 63-character DNS label limit. */}}
{{- define "rewardhub.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rewardhub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A component's object name; takes (list $ "component"). Service names use "-" not "_". */}}
{{- define "rewardhub.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "rewardhub.fullname" $root) (index . 1 | replace "_" "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component; takes (list $ "component"). */}}
{{- define "rewardhub.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "rewardhub.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 | replace "_" "-" }}
{{- end -}}

{{/* All labels of a component (Kubernetes' recommended labels); takes (list $ "component"). */}}
{{- define "rewardhub.labels" -}}
{{- $root := index . 0 -}}
{{ include "rewardhub.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: rewardhub
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "rewardhub.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "rewardhub.secretName" -}}
{{- default (printf "%s-secrets" (include "rewardhub.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "rewardhub.configMapName" -}}
{{- printf "%s-config" (include "rewardhub.fullname" .) -}}
{{- end -}}

{{- define "rewardhub.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rewardhub.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret's key (an environment variable's name) for each `credentials` entry. */}}
{{- define "rewardhub.credentialKeys" -}}
{{- dict "databaseUrl" "DATABASE_URL" "redisUrl" "REDIS_URL" "secretKey" "REWARDHUB_SECRET_KEY" "sandboxToken" "REWARDHUB_SANDBOX_TOKEN" | toJson -}}
{{- end -}}

{{/* env entries for a component's credentials, each one key of the Secret; takes (list $ credentials).
     The sandbox token is optional (an empty token means none). */}}
{{- define "rewardhub.credentialEnv" -}}
{{- $root := index . 0 -}}
{{- $keys := include "rewardhub.credentialKeys" $root | fromJson -}}
{{- range index . 1 }}
- name: {{ get $keys . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "rewardhub.secretName" $root }}
      key: {{ get $keys . }}
      {{- if eq . "sandboxToken" }}
      optional: true
      {{- end }}
{{- end }}
{{- end -}}

{{/* A component's own env: the database pool (overridable by its `env`), its `env`, its `extraEnv`;
     takes (list $ component). */}}
{{- define "rewardhub.componentEnv" -}}
{{- $root := index . 0 -}}
{{- $comp := index . 1 -}}
{{- $own := $comp.env | default dict -}}
{{- if has "databaseUrl" ($comp.credentials | default list) }}
{{- $pool := dict "REWARDHUB_DB_POOL_SIZE" ($root.Values.database.pool.size | toString) "REWARDHUB_DB_MAX_OVERFLOW" ($root.Values.database.pool.maxOverflow | toString) "REWARDHUB_DB_PGBOUNCER" ($root.Values.database.pgbouncer | toString) -}}
{{- range $key, $value := $pool }}
{{- if not (hasKey $own $key) }}
- name: {{ $key }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- range $key, $value := $own }}
- name: {{ $key }}
  value: {{ $value | quote }}
{{- end }}
{{- with $comp.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod annotations that roll the pods when the configuration changes. */}}
{{- define "rewardhub.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{/* The pod-level fields every rewardhub pod shares; takes (list $ "component" componentValues). */}}
{{- define "rewardhub.podCommon" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $comp := index . 2 -}}
serviceAccountName: {{ include "rewardhub.serviceAccountName" $root }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $comp.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $comp.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $comp.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range $root.Values.topologySpread.constraints }}
  - topologyKey: {{ .topologyKey }}
    maxSkew: {{ .maxSkew }}
    whenUnsatisfiable: {{ .whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "rewardhub.selectorLabels" (list $root $name) | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* A container's securityContext: the chart's, with the component's overrides; takes (list $ component). */}}
{{- define "rewardhub.containerSecurity" -}}
{{- $root := index . 0 -}}
{{- $comp := index . 1 -}}
{{- $security := deepCopy $root.Values.securityContext -}}
{{- with $comp.seccompProfile }}
{{- $_ := set $security "seccompProfile" . }}
{{- end }}
{{- toYaml $security -}}
{{- end -}}

{{/* The writable mounts on the read-only root: /tmp, /data, and the component's extras. */}}
{{- define "rewardhub.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /data
{{- with .extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* takes (list $ component) */}}
{{- define "rewardhub.volumes" -}}
{{- $root := index . 0 -}}
{{- $comp := index . 1 -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $root.Values.tmpVolume.sizeLimit }}
- name: data
  {{- if and $comp.persistence $comp.persistence.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ $comp.persistence.existingClaim }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- with $comp.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The preStop hook: sleep while the endpoints controller and proxies drop the pod. */}}
{{- define "rewardhub.lifecycle" -}}
preStop:
  exec:
    command: ["sleep", {{ .Values.shutdown.preStopSleepSeconds | quote }}]
{{- end -}}

{{/* The Celery queues, one per job kind (services.common.registry.queue_names; a test keeps them equal). */}}
{{- define "rewardhub.jobQueues" -}}
celery,annotation,rubric_rm,rec_rm
{{- end -}}
