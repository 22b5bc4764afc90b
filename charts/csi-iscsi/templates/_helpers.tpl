{{/* Labels every object carries; selectors use only name + component, which never change. */}}
{{- define "csi-iscsi.labels" -}}
app.kubernetes.io/name: csi-iscsi
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "csi-iscsi.image" -}}
{{- include "csi-iscsi.sidecar" .Values.image -}}
{{- end -}}

{{- define "csi-iscsi.sidecar" -}}
{{- if .digest -}}
{{ printf "%s@%s" .repository .digest }}
{{- else -}}
{{ printf "%s:%s" .repository .tag }}
{{- end -}}
{{- end -}}

{{/* The kubelet-side directory of the driver's node socket. */}}
{{- define "csi-iscsi.pluginDir" -}}
{{ printf "%s/plugins/%s" .Values.kubeletDir .Values.driverName }}
{{- end -}}

{{/*
The hardened sidecars' securityContext. On SELinux-enforcing nodes the privileged plugin's socket
is labelled for spc_t, which a confined container_t sidecar may not connect to: sidecars.seLinuxOptions
(for example {type: spc_t}) lets them.
*/}}
{{- define "csi-iscsi.sidecarSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- with .Values.sidecars.seLinuxOptions }}
seLinuxOptions:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
