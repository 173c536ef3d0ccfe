"""Placeholder for the Gradio demo: the four-tab app is not built yet."""

import gradio as gr

with gr.Blocks(title="VQ-MDVAE") as demo:
    gr.Markdown("# VQ-MDVAE\nThe demo is not built yet: this page is a placeholder.")

if __name__ == "__main__":
    demo.launch()
