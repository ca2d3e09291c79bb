"""micagent models layer: the multimodal fusion classifier of CM-EMRL and MultiFusion-LLM.

One file per component: vit (timm ViT), hnf (hierarchical network fusion) with ode
(bidirectional neural ODE) and graph (kNN vision graphs, ChebConv), gnn (ChebConv baseline),
text / text_encoder (LLM descriptions through a small LM), alignment (best-match text),
lmm (prediction embedding), pooled (the few-shot head's pooled stem features), attention
(hierarchical MHA), fusion (FusionClassifier), config
(FusionConfig and ablation presets), preprocess, calibration, checkpoint, classifier (facade),
prediction (output record), errors. Imports nothing else of the project.
"""
