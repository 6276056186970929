{{/* Release-qualified base name, within the 63-character DNS label limit. */}}
{{- define "rewardhub.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's object name; takes (list $ "component"). Service names use "-" not "_". */}}
{{- define "rewardhub.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "rewardhub.fullname" $root) (index . 1 | replace "_" "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component; takes (list $ "component"). */}}
{{- define "rewardhub.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 | replace "_" "-" }}
{{- end -}}

{{/* All labels of a component; takes (list $ "component"). */}}
{{- define "rewardhub.labels" -}}
{{- $root := index . 0 -}}
{{ include "rewardhub.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "rewardhub.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "rewardhub.secretName" -}}
{{- default (printf "%s-secrets" (include "rewardhub.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "rewardhub.configMapName" -}}
{{- printf "%s-config" (include "rewardhub.fullname" .) -}}
{{- end -}}

{{/* Environment of every rewardhub container: the ConfigMap (URLs, settings) and the Secret. */}}
{{- define "rewardhub.envFrom" -}}
- configMapRef:
    name: {{ include "rewardhub.configMapName" . }}
- secretRef:
    name: {{ include "rewardhub.secretName" . }}
{{- end -}}

{{/* Pod annotations that roll the pods when the configuration changes. */}}
{{- define "rewardhub.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{/* The pod-level fields every rewardhub pod shares. */}}
{{- define "rewardhub.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}
